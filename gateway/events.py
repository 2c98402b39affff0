"""``POST /v1/events/{tenant_id}``: a tenant's own systems report a custom event about a contact.

Authentication is a Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``) under the tenant's
secret, held by ``ALGOR_EVENTS_SECRET_<TENANT>`` (``whsec_…``; in the embedded default the
installation's sandbox secret for that name). It is the scheme our outbound webhooks already use, so
a tenant signs with any Standard Webhooks library; the timestamp bounds replays to five minutes.
Issue #13's scoped API keys can replace it without touching the body: authentication is the one
function ``authenticate`` here, and the body carries its own ``idempotency_key``.

Answers: 202 stored (new), 200 a repeat of an ``idempotency_key`` already stored (nothing changed:
the first post wins), 401 bad or missing signature, 404 unknown tenant, 413 body over
``MAX_BODY_BYTES``, 422 a body that is not a valid event, 503 store down (retry). The event is
stored in the webhook inbox and applied by the next delivery-processing run (the inbox sensor
launches it): the gateway never opens the warehouse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.openapi import refusals
from gateway.receivers import KiB, Refused, read_body
from policies.tenants import Tenant
from resources.custom_events import EVENTS, PostedEvent, events_secret_env
from resources.standard_webhooks import signing_secret

MAX_BODY_BYTES = 16 * KiB


def authenticate(tenant_id: str, body: bytes, headers: dict[str, str]) -> None:
    """Raise Refused(401) unless the post is signed with the tenant's events secret."""
    try:
        Webhook(signing_secret(events_secret_env(tenant_id))).verify(body, headers)
    except WebhookVerificationError as exc:
        raise Refused(401, f"bad signature: {exc}") from None


def add_event_routes(
    app: FastAPI,
    tenant_or_404: Callable[[str, str], Tenant],
    persist: Callable[[str, str, list[tuple[str, dict]]], Awaitable[int]],
    refuse: Callable[[int, str], HTTPException],
) -> None:
    """Register ``POST /v1/events/{tenant_id}`` on ``app``, sharing the gateway's tenant lookup,
    inbox writer and refusal logging."""

    @app.post(
        "/v1/events/{tenant_id}",
        status_code=202,
        responses={200: {"description": "A repeat of a stored idempotency_key; nothing changed"}} | refusals(401, 404, 413, 422, 503),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PostedEvent.model_json_schema()}}}},
    )
    async def post_event(tenant_id: str, request: Request) -> JSONResponse:
        """A custom event about one contact (Standard Webhooks-signed with the tenant's events
        secret): starts `trigger: {event: custom, name: …}` campaigns and, with `conversion: true`,
        counts as a conversion."""
        tenant_or_404(tenant_id, EVENTS)
        try:
            body = await read_body(request, MAX_BODY_BYTES)
            authenticate(tenant_id, body, dict(request.headers))
        except Refused as refused:
            raise refuse(refused.status, refused.reason) from None
        try:
            event = PostedEvent.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}" for error in exc.errors())
            raise refuse(422, f"not a valid event: {problems}") from None
        new = await persist(tenant_id, EVENTS, [(event.idempotency_key, event.model_dump(mode="json"))])
        return JSONResponse({"status": "accepted" if new else "duplicate"}, status_code=202 if new else 200)

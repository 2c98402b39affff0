"""The webhook gateway: provider callbacks in, verified, stored durably, acknowledged.

It proves each request came from the provider (as that provider defines it), writes it to the
inbox in one short transaction and only then answers 2xx; if the store is down it answers 503 so
the provider retries. It never opens the warehouse: turning callbacks into state is the inbox
sensor's and the delivery-processing run's job.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import time
from collections import OrderedDict

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
import sqlalchemy as sa

from gateway.inbox import already_stored, store_callback
from policies.loader import load_tenants
from policies.schema import Tenant
from resources.callbacks import UNSUBSCRIBE, unsubscribe_event_key, unsubscribe_payload
from resources.channels import mailgun, telegram
from resources.links import verify_unsubscribe
from resources.opstore import engine_for, migrate
from resources.settings import get_settings

log = logging.getLogger("algor.gateway")
MAX_BODY_BYTES = 1_000_000
SEEN_TOKENS_MAX = 100_000
UNSUBSCRIBE_FORM = """<!doctype html><meta charset="utf-8"><title>Отписка / Unsubscribe</title>
<p>Отписаться от рассылок {sender}? / Unsubscribe from {sender}'s mailings?</p>
<form method="post"><button type="submit">Отписаться / Unsubscribe</button></form>"""
UNSUBSCRIBED_PAGE = """<!doctype html><meta charset="utf-8"><title>Готово / Done</title>
<p>Вы отписаны. / You are unsubscribed.</p>"""


class SeenTokens:
    """Bounded memory of Mailgun signature tokens, refusing a token's second use (replay)."""

    def __init__(self, limit: int = SEEN_TOKENS_MAX) -> None:
        self._tokens: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def first_use(self, token: str) -> bool:
        if token in self._tokens:
            return False
        self._tokens[token] = None
        if len(self._tokens) > self._limit:
            self._tokens.popitem(last=False)
        return True


def create_app(database_url: str | None = None, tenants: dict[str, Tenant] | None = None) -> FastAPI:
    settings = get_settings()
    url = database_url or settings.database_url
    migrate(url)
    engine = engine_for(url)
    tenants = tenants if tenants is not None else load_tenants().tenants
    seen_tokens = SeenTokens()
    app = FastAPI(title="Algor webhook gateway", version="0.1.0")

    def tenant_or_404(tenant_id: str) -> Tenant:
        tenant = tenants.get(tenant_id)
        if tenant is None:
            raise HTTPException(404, "unknown tenant")
        return tenant

    async def json_body(request: Request) -> tuple[bytes, dict]:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, "body too large")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HTTPException(400, "body is not JSON") from None
        if not isinstance(payload, dict):
            raise HTTPException(400, "body is not a JSON object")
        return body, payload

    def persist(tenant_id: str, provider: str, account: str, event_key: str, body: bytes) -> bool:
        try:
            return store_callback(engine, tenant_id, provider, account, event_key, body.decode())
        except sa.exc.OperationalError as exc:  # store down: make the provider retry
            log.error("inbox unavailable: %s", exc)
            raise HTTPException(503, "inbox unavailable, retry later") from None

    @app.post("/hooks/{tenant_id}/telegram")
    async def telegram_update(tenant_id: str, request: Request) -> Response:
        tenant = tenant_or_404(tenant_id)
        if tenant.accounts.telegram is None:
            raise HTTPException(404, "no telegram account")
        secret = settings.secret(tenant.accounts.telegram.webhook_secret_env)
        if not telegram.verify_webhook(request.headers, secret):
            log.warning("refused telegram update for %s: bad secret token", tenant_id)
            raise HTTPException(403, "bad secret token")
        body, payload = await json_body(request)
        new = persist(tenant_id, "telegram", "bot", telegram.event_key(payload), body)
        log.info("telegram update %s for %s (%s)", telegram.event_key(payload), tenant_id, "stored" if new else "duplicate")
        return Response(status_code=200)

    @app.post("/hooks/{tenant_id}/mailgun")
    async def mailgun_event(tenant_id: str, request: Request) -> Response:
        tenant = tenant_or_404(tenant_id)
        if tenant.accounts.mailgun is None:
            raise HTTPException(404, "no mailgun account")
        body, payload = await json_body(request)
        key = settings.secret(tenant.accounts.mailgun.signing_key_env)
        if not mailgun.verify_webhook(payload, key, time.time()):
            log.warning("refused mailgun event for %s: bad or stale signature", tenant_id)
            raise HTTPException(406, "bad signature")  # Mailgun stops retrying on 406
        token = str(payload["signature"]["token"])
        event_id = str(payload.get("event-data", {}).get("id", ""))
        if not event_id:
            raise HTTPException(400, "event-data.id missing")
        # A replayed signature for an event we already hold is a harmless retry; for any other
        # event it is a forgery.
        if not seen_tokens.first_use(token) and not already_stored(engine, tenant_id, "mailgun", event_id):
            log.warning("refused mailgun event for %s: replayed token", tenant_id)
            raise HTTPException(406, "replayed signature")
        new = persist(tenant_id, "mailgun", tenant.accounts.mailgun.domain, event_id, body)
        log.info("mailgun event %s for %s (%s)", event_id, tenant_id, "stored" if new else "duplicate")
        return PlainTextResponse("ok")

    @app.get("/unsubscribe/{tenant_id}/{token}", response_class=HTMLResponse)
    async def unsubscribe_page(tenant_id: str, token: str) -> HTMLResponse:
        """Shows a confirmation form and changes nothing: link scanners follow GETs (RFC 8058)."""
        tenant = tenant_or_404(tenant_id)
        if verify_unsubscribe(tenant_id, token) is None:
            raise HTTPException(404, "unknown link")
        return HTMLResponse(UNSUBSCRIBE_FORM.format(sender=html.escape(tenant.name)))

    @app.post("/unsubscribe/{tenant_id}/{token}", response_class=HTMLResponse)
    async def unsubscribe(tenant_id: str, token: str, request: Request) -> HTMLResponse:
        """One-click unsubscribe (RFC 8058 POST ``List-Unsubscribe=One-Click``) or the form's button."""
        tenant_or_404(tenant_id)
        subject = verify_unsubscribe(tenant_id, token)
        if subject is None:
            raise HTTPException(404, "unknown link")
        contact_id, campaign = subject
        body = (await request.body())[:MAX_BODY_BYTES]
        method = "one-click" if b"List-Unsubscribe=One-Click" in body else "form"
        payload = unsubscribe_payload(contact_id, campaign, method, dt.datetime.now(dt.UTC))
        persist(tenant_id, UNSUBSCRIBE, "links", unsubscribe_event_key(contact_id, campaign), json.dumps(payload).encode())
        return HTMLResponse(UNSUBSCRIBED_PAGE)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        except sa.exc.OperationalError:
            raise HTTPException(503, "operational store unavailable") from None
        return {"status": "ready"}

    return app


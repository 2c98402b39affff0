"""The webhook gateway: provider callbacks in, verified, stored durably, acknowledged.

It proves each request came from the provider (as that provider defines it), writes it to the
inbox (concurrent requests share one short transaction: ``gateway/inbox.py``) and only then
answers 2xx; if the store is down it answers 503 so the provider retries. Every request leaves
one JSON log line with its request id (``gateway/request_log.py``). It never opens the
warehouse: turning callbacks into state is the inbox sensor's and the delivery-processing run's job.
Button presses are answered from here, because only here is it soon enough: Telegram's in the
webhook answer, VK's by an API call in the background once stored (``gateway/button_answers.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import hashlib
import html
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.button_answers import ButtonAnswers
from gateway.events import add_event_routes
from gateway.inbox import InboxWriter, already_stored
from gateway.openapi import HOOKS, refusals
from gateway.receivers import RECEIVERS, KiB, Refused, read_body
from gateway.request_log import RequestLogMiddleware, annotate, configure_logging
from gateway.scanners import looks_automated
from policies.loader import load_tenants
from policies.tenants import Tenant
from resources.callbacks import CLICKS, UNSUBSCRIBE, click_payload, unsubscribe_event_key, unsubscribe_payload
from resources.links import verify_click, verify_unsubscribe
from resources.opstore import engine_for, migrate
from resources.settings import get_settings

SEEN_TOKENS_MAX = 100_000
UNSUBSCRIBE_MAX_BODY_BYTES = 64 * KiB  # RFC 8058's one-click body is 26 bytes, the form's is empty
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
    url = database_url or get_settings().database_url
    migrate(url)
    engine = engine_for(url)
    tenants = tenants if tenants is not None else load_tenants().tenants
    seen_tokens = SeenTokens()
    inbox = InboxWriter(engine)
    button_answers = ButtonAnswers(tenants)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await button_answers.aclose()

    app = FastAPI(title="Algor webhook gateway", version="0.1.0", lifespan=lifespan)
    app.state.button_answers = button_answers
    app.add_middleware(RequestLogMiddleware)

    def refuse(status: int, reason: str) -> HTTPException:
        """The answer to a request we do not take; the reason goes to its log line."""
        annotate(outcome="unavailable" if status >= 500 else "refused", reason=reason)
        return HTTPException(status, reason)

    def tenant_or_404(tenant_id: str, source: str) -> Tenant:
        annotate(tenant=tenant_id, provider=source)
        tenant = tenants.get(tenant_id)
        if tenant is None:
            raise refuse(404, "unknown tenant")
        return tenant

    async def persist(tenant_id: str, source: str, events: list[tuple[str, dict]]) -> int:
        try:
            new = await inbox.store(tenant_id, source, events)
        except sa.exc.OperationalError:  # store down: make the provider retry (logged by the writer)
            raise refuse(503, "inbox unavailable, retry later") from None
        annotate(outcome="stored" if new else "duplicate" if events else "answered", events=len(events), new=new)
        return new

    async def receive(tenant_id: str, provider: str, extra: str, request: Request) -> Response:
        tenant = tenant_or_404(tenant_id, provider)
        receiver = RECEIVERS.get(provider)
        if receiver is None:
            raise refuse(404, "unknown provider")
        try:
            # Read per request (cheap): the public URL Twilio signs may be known only after start-up.
            accepted = await receiver(request, tenant, get_settings(), extra)
            # Mailgun's signature does not cover the body: a token seen before may only come back
            # with an event we already hold (a provider retry), never with a new one.
            if accepted.replay_token and not seen_tokens.first_use(accepted.replay_token):
                keys = [key for key, _ in accepted.events]
                if not await asyncio.to_thread(lambda: all(already_stored(engine, tenant_id, provider, key) for key in keys)):
                    raise Refused(406, "replayed signature")
        except Refused as refused:
            raise refuse(refused.status, refused.reason) from None
        new = await persist(tenant_id, provider, accepted.events)
        if accepted.press is not None and new:  # a re-delivered press was answered when it was new
            annotate(button_answer="queued" if button_answers.submit(tenant_id, accepted.press) else "dropped")
        return accepted.answer

    def hook_endpoint(provider: str, secret_path: bool):
        """The handler of one provider's callback route; FastAPI reads the path parameters from
        its signature. Providers that sign nothing (SMS.ru) carry a secret in the URL instead."""
        if secret_path:

            async def callback_with_secret(tenant_id: str, secret: str, request: Request) -> Response:
                return await receive(tenant_id, provider, secret, request)

            return callback_with_secret

        async def callback(tenant_id: str, request: Request) -> Response:
            return await receive(tenant_id, provider, "", request)

        return callback

    for provider, doc in HOOKS.items():
        app.add_api_route(
            f"/hooks/{{tenant_id}}/{provider}" + ("/{secret}" if doc.secret_path else ""),
            hook_endpoint(provider, doc.secret_path),
            methods=["POST"],
            name=f"{provider}_callback",
            summary=doc.summary,
            description="Verified the way the provider defines it, stored once, then acknowledged.",
            response_class=Response,
            responses=doc.responses(RECEIVERS[provider].max_body_bytes),
            openapi_extra=doc.request,
        )

    @app.post("/hooks/{tenant_id}/{provider:path}", response_class=Response, status_code=404, responses=refusals(404))
    async def unknown_provider_callback(tenant_id: str, provider: str, request: Request) -> Response:
        """Any other provider or path under a tenant's hooks: 404, with the reason logged."""
        return await receive(tenant_id, provider, "", request)

    @app.get("/unsubscribe/{tenant_id}/{token}", response_class=HTMLResponse, responses=refusals(404))
    async def unsubscribe_page(tenant_id: str, token: str) -> HTMLResponse:
        """Shows a confirmation form and changes nothing: link scanners follow GETs (RFC 8058)."""
        tenant = tenant_or_404(tenant_id, UNSUBSCRIBE)
        if verify_unsubscribe(tenant_id, token) is None:
            raise refuse(404, "unknown link")
        return HTMLResponse(UNSUBSCRIBE_FORM.format(sender=html.escape(tenant.name)))

    @app.post("/unsubscribe/{tenant_id}/{token}", response_class=HTMLResponse, responses=refusals(404, 413, 503))
    async def unsubscribe(tenant_id: str, token: str, request: Request) -> HTMLResponse:
        """One-click unsubscribe (RFC 8058 POST ``List-Unsubscribe=One-Click``) or the form's button."""
        tenant_or_404(tenant_id, UNSUBSCRIBE)
        subject = verify_unsubscribe(tenant_id, token)
        if subject is None:
            raise refuse(404, "unknown link")
        contact_id, campaign = subject
        try:
            body = await read_body(request, UNSUBSCRIBE_MAX_BODY_BYTES)
        except Refused as refused:  # too large
            raise refuse(refused.status, refused.reason) from None
        method = "one-click" if b"List-Unsubscribe=One-Click" in body else "form"
        payload = unsubscribe_payload(contact_id, campaign, method, dt.datetime.now(dt.UTC))
        await persist(tenant_id, UNSUBSCRIBE, [(unsubscribe_event_key(contact_id, campaign), payload)])
        return HTMLResponse(UNSUBSCRIBED_PAGE)

    redirect = {302: {"description": "Redirect to the link's signed target", "headers": {"Location": {"schema": {"type": "string"}}}}}
    link_docs = {"response_class": RedirectResponse, "status_code": 302, "responses": redirect | refusals(404, 503)}

    @app.head("/c/{tenant_id}/{token}", **link_docs)  # a route per method: one OpenAPI operation id each
    @app.get("/c/{tenant_id}/{token}", **link_docs)
    async def tracked_link(tenant_id: str, token: str, request: Request) -> Response:
        """A tracked link: 302 to the signed target and a click recorded. Unknown or tampered
        links are 404, so this is never an open redirect; HEAD requests and known link scanners
        are recorded as non-human and not counted as clicks."""
        tenant_or_404(tenant_id, CLICKS)
        link = verify_click(tenant_id, token)
        if link is None:
            raise refuse(404, "unknown link")
        user_agent = request.headers.get("user-agent", "")
        human = request.method == "GET" and not looks_automated(user_agent)
        now = dt.datetime.now(dt.UTC)
        await persist(tenant_id, CLICKS, [(f"{hashlib.sha256(token.encode()).hexdigest()[:32]}:{now.isoformat()}", click_payload(link, human, user_agent, now))])
        return RedirectResponse(link["url"], status_code=302)

    add_event_routes(app, tenant_or_404, persist, refuse)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses=refusals(503))
    async def ready() -> dict:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        except sa.exc.OperationalError:
            raise refuse(503, "operational store unavailable") from None
        return {"status": "ready"}

    return app


def worker_app(tenants_file: str | None = None) -> FastAPI:
    """The app as ``python -m gateway`` serves it, built in each worker process: JSON logs, and
    the tenants of ``tenants_file`` (default: the policy config)."""
    configure_logging()
    app = create_app(tenants=load_tenants(tenants_file).tenants)
    # The imports (Dagster among them, via resources) leave ~200k long-lived objects; every full
    # collection rescanned them, stalling all requests in flight for 100 ms and more under load.
    # Frozen, they are never scanned again.
    gc.freeze()
    return app


"""The webhook gateway: provider callbacks in, verified, stored durably, acknowledged.

It proves each request came from the provider (as that provider defines it), writes it to the
inbox in one short transaction and only then answers 2xx; if the store is down it answers 503 so
the provider retries. It never opens the warehouse: turning callbacks into state is the inbox
sensor's and the delivery-processing run's job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import logging
from collections import OrderedDict

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.inbox import already_stored, store_callbacks
from gateway.receivers import MAX_BODY_BYTES, RECEIVERS, Refused
from gateway.scanners import looks_automated
from policies.loader import load_tenants
from policies.schema import Tenant
from resources.callbacks import CLICKS, UNSUBSCRIBE, click_payload, unsubscribe_event_key, unsubscribe_payload
from resources.links import verify_click, verify_unsubscribe
from resources.opstore import engine_for, migrate
from resources.settings import get_settings

log = logging.getLogger("algor.gateway")
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
    url = database_url or get_settings().database_url
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

    def persist(tenant_id: str, provider: str, events: list[tuple[str, dict]]) -> int:
        try:
            return store_callbacks(engine, tenant_id, provider, events)
        except sa.exc.OperationalError as exc:  # store down: make the provider retry
            log.error("inbox unavailable: %s", exc)
            raise HTTPException(503, "inbox unavailable, retry later") from None

    async def receive(tenant_id: str, provider: str, extra: str, request: Request) -> Response:
        tenant = tenant_or_404(tenant_id)
        receiver = RECEIVERS.get(provider)
        if receiver is None:
            raise HTTPException(404, "unknown provider")
        try:
            # Read per request (cheap): the public URL Twilio signs may be known only after start-up.
            accepted = await receiver(request, tenant, get_settings(), extra)
            # Mailgun's signature does not cover the body: a token seen before may only come back
            # with an event we already hold (a provider retry), never with a new one.
            if accepted.replay_token and not seen_tokens.first_use(accepted.replay_token):
                if not all(already_stored(engine, tenant_id, provider, key) for key, _ in accepted.events):
                    raise Refused(406, "replayed signature")
        except Refused as refused:
            log.warning("refused %s callback for %s: %s", provider, tenant_id, refused.reason)
            raise HTTPException(refused.status, refused.reason) from None
        stored = persist(tenant_id, provider, accepted.events)
        log.info("%s callback for %s: %d event(s), %d new", provider, tenant_id, len(accepted.events), stored)
        return accepted.answer

    @app.post("/hooks/{tenant_id}/{provider}")
    async def provider_callback(tenant_id: str, provider: str, request: Request) -> Response:
        """A provider's callback, verified the way that provider defines it."""
        return await receive(tenant_id, provider, "", request)

    @app.post("/hooks/{tenant_id}/{provider}/{secret}")
    async def provider_callback_secret_path(tenant_id: str, provider: str, secret: str, request: Request) -> Response:
        """For providers that sign nothing (SMS.ru), the callback URL carries a secret."""
        return await receive(tenant_id, provider, secret, request)

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
        persist(tenant_id, UNSUBSCRIBE, [(unsubscribe_event_key(contact_id, campaign), payload)])
        return HTMLResponse(UNSUBSCRIBED_PAGE)

    @app.api_route("/c/{tenant_id}/{token}", methods=["GET", "HEAD"])
    async def tracked_link(tenant_id: str, token: str, request: Request) -> Response:
        """A tracked link: 302 to the signed target and a click recorded. Unknown or tampered
        links are 404, so this is never an open redirect; HEAD requests and known link scanners
        are recorded as non-human and not counted as clicks."""
        tenant_or_404(tenant_id)
        link = verify_click(tenant_id, token)
        if link is None:
            raise HTTPException(404, "unknown link")
        user_agent = request.headers.get("user-agent", "")
        human = request.method == "GET" and not looks_automated(user_agent)
        now = dt.datetime.now(dt.UTC)
        persist(tenant_id, CLICKS, [(f"{hashlib.sha256(token.encode()).hexdigest()[:32]}:{now.isoformat()}", click_payload(link, human, user_agent, now))])
        return RedirectResponse(link["url"], status_code=302)

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


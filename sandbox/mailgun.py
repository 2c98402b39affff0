"""The Mailgun messages API as the sandbox speaks it: `POST /v3/<domain>/messages`, and its webhooks.

Auth is HTTP Basic `api:<key>`; a wrong key gets 401 with the plain-text body "Forbidden". Other
errors are `{"message": "…"}`. Webhook bodies are `{"signature": {…}, "event-data": {…}}`, signed
here with the sandbox's own HMAC code (deliberately not `resources.channels`, so the tests prove
two independent implementations agree).
Batch sending: up to 1000 `to` recipients per call; with `recipient-variables`, every
`%recipient.<key>%` in subject, text, html, `v:` and `h:` fields is replaced per recipient with that
recipient's value (an unknown key stays as written), so each recipient's record and events carry its
own variables.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import MailgunDomain
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import BOUNCE, CLICK, COMPLAIN, MAILGUN, outcome_for
from sandbox.state import SandboxState

# The events each outcome produces, in order.
_EVENTS = {
    BOUNCE: ("failed",),
    COMPLAIN: ("delivered", "complained"),
    CLICK: ("delivered", "opened", "clicked"),
}
_DELIVERED_EVENTS = ("delivered",)
_URL = re.compile(r"https?://[^\s\"'<>]+")
_RECIPIENT_VARIABLE = re.compile(r"%recipient\.([^%\s]+)%")
MAX_RECIPIENTS = 1000


def routes() -> list[Route]:
    return [Route("/v3/{domain}/messages", _messages, methods=["POST"])]


def signature(signing_key: str) -> dict[str, str]:
    """A fresh Mailgun `signature` object: hex(HMAC-SHA256(key, timestamp + token)), 50-char token."""
    timestamp, token = str(int(time.time())), secrets.token_hex(25)
    digest = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": digest}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _api_key(request: Request) -> str | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, key = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return None
    return key if user == "api" else None


async def _messages(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    key, domain = _api_key(request), request.path_params["domain"]
    account = next((acc for acc in state.config.mailgun if acc.domain == domain), None)
    if account is None or key != account.api_key:
        state.refuse(MAILGUN)
        # Keys are account-wide at Mailgun: a valid key on a domain it does not own is a 404, not a 401.
        if account is None and any(acc.api_key == key for acc in state.config.mailgun):
            return _error(404, f"Domain not found: {domain}")
        return PlainTextResponse("Forbidden", status_code=401)
    try:
        params = await read_params(request)
    except BadRequest as exc:
        state.refuse(MAILGUN)
        return _error(400, str(exc))
    fields = {name: str(value) for name, value in params}  # last one wins, except `to` below
    addresses = getaddresses([str(v) for n, v in params if n == "to"])
    recipients = [addr for _, addr in addresses]
    problem = (
        "from parameter is missing" if not fields.get("from") else
        "to parameter is missing" if "to" not in fields else
        "to parameter is not a valid address. please check documentation"
        if not recipients or not all("@" in addr for addr in recipients) else
        f"Too many recipients, max is {MAX_RECIPIENTS}" if len(recipients) > MAX_RECIPIENTS else
        "subject parameter is missing" if "subject" not in fields else
        "Need at least one of 'text', 'html' or 'template' parameters specified"
        if not (fields.get("text") or fields.get("html") or fields.get("template")) else None
    )
    try:
        recipient_variables = json.loads(fields.get("recipient-variables") or "{}")
    except ValueError:
        recipient_variables = None
    if not isinstance(recipient_variables, dict):
        problem = problem or "recipient-variables parameter is not a valid JSON"
    if problem:
        state.refuse(MAILGUN)
        return _error(400, problem)
    if refusal := await state.admit(request, MAILGUN, domain, account.rate_limit_per_s):
        state.refuse(MAILGUN)
        return _error(refusal.status, refusal.description)

    now = datetime.now(UTC)
    message_id = f"{now:%Y%m%d%H%M%S}.{next(state.message_ids)}.{secrets.token_hex(8).upper()}@{domain}"
    tags = [str(value) for name, value in params if name == "o:tag"]
    for recipient in recipients:
        own = recipient_variables.get(recipient)
        mine = _substitute(fields, own if isinstance(own, dict) else {})
        variables = {name[2:]: value for name, value in mine.items() if name.startswith("v:")}
        headers = {name[2:]: value for name, value in mine.items() if name.startswith("h:")}
        outcome = outcome_for(MAILGUN, recipient)
        state.record(
            MAILGUN,
            outcome,
            accepted=True,
            account=domain,
            recipient=recipient,
            text=mine.get("text"),
            subject=mine["subject"],
            html=mine.get("html"),
            headers=headers,
            variables=variables,
            provider_message_id=message_id,
            send_id=variables.get("send_id"),
        )
        if account.webhook_url:
            events = _EVENTS.get(outcome, _DELIVERED_EVENTS)
            message = {"message_id": message_id, "fields": mine, "variables": variables, "tags": tags, "recipient": recipient}
            state.dispatcher.submit([_callback(account, event, message) for event in events])
    return JSONResponse({"id": f"<{message_id}>", "message": "Queued. Thank you."})


def _substitute(fields: dict[str, str], variables: dict[str, Any]) -> dict[str, str]:
    """`fields` with `%recipient.<key>%` replaced by this recipient's values (unknown keys stay)."""
    if not variables:
        return fields

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        return str(variables[key]) if key in variables else match.group(0)

    return {name: _RECIPIENT_VARIABLE.sub(value, text) for name, text in fields.items()}


def _callback(account: MailgunDomain, event: str, message: dict[str, Any]) -> Callback:
    data = _event_data(event, message)

    def build() -> tuple[dict[str, Any], dict[str, str]]:
        return {"signature": signature(account.signing_key), "event-data": data}, {}

    return Callback(str(account.webhook_url), build, final_statuses=frozenset({406}))


def _event_data(event: str, message: dict[str, Any]) -> dict[str, Any]:
    fields, recipient = message["fields"], message["recipient"]
    data: dict[str, Any] = {
        "id": secrets.token_urlsafe(16)[:22],
        "event": event,
        "timestamp": round(time.time(), 6),
        "recipient": recipient,
        "recipient-domain": recipient.rsplit("@", 1)[-1],
        "tags": message["tags"],
        "user-variables": message["variables"],
        "message": {
            "headers": {
                "message-id": message["message_id"],
                "from": fields["from"],
                "to": recipient,
                "subject": fields["subject"],
            }
        },
    }
    if event == "delivered":
        data["delivery-status"] = {"code": 250, "message": "OK", "tls": True, "mx-host": "mx.sandbox.invalid"}
    elif event == "failed":
        data["severity"], data["reason"] = "permanent", "bounce"
        data["delivery-status"] = {"code": 550, "message": "5.1.1 User unknown", "description": ""}
    elif event in ("opened", "clicked"):
        data["ip"] = "203.0.113.5"
        data["client-info"] = {"client-name": "Sandbox", "device-type": "desktop", "user-agent": "Sandbox/1.0"}
        if event == "clicked" and (url := _URL.search(f"{fields.get('html') or ''} {fields.get('text') or ''}")):
            data["url"] = url.group(0)
    return data

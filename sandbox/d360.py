"""360dialog WhatsApp (Cloud API via waba-v2) as the sandbox speaks it: `POST /messages`.

Auth is the `D360-API-KEY` header. 360dialog's own errors are `{"meta": {"success": false,
"http_code": n, "developer_message": "…", "360dialog_trace_id": "…"}}` (401 "Invalid api_key", and the
endpoint rate limit, which is an HTTP **400** "You have exceeded the endpoint rate limit."). Payload
errors are Meta's `{"error": {"message": "(#100) …", "type": "OAuthException", "code": …,
"error_data": {…}, "fbtrace_id": "…"}}` with HTTP 400. Success is 200 with `contacts` and
`messages[0].id` (a `wamid.…`).

A `to` that is not a phone number with its country code (anything but digits, spaces, dashes, dots,
parentheses and one leading "+"; a leading 0, as in "0033…"; fewer than 7 or more than 15 digits) is
refused synchronously, as the Cloud API refuses it: 400 code 100 "(#100) Invalid parameter" with
`error_data.details` naming the `to` parameter (Meta's details text for this case is not published;
the wording is the sandbox's). A well-formed number that is not on WhatsApp is accepted and fails
later (131026, below), as at Meta.

Webhooks go to the account's `webhook_url` with its `webhook_headers` (the custom-header auth
360dialog offers), one Meta-format `whatsapp_business_account` payload per status or inbound message.
Delivery failures are asynchronous, as at Meta: `failed` statuses with `errors[]` (131026, 131047).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import D360Account
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import (
    D360,
    DELIVER,
    NO_WHATSAPP,
    READ,
    STOP,
    WINDOW,
    outcome_for,
    phone_digits,
)
from sandbox.state import SandboxState

RATE_LIMIT_MESSAGE = "You have exceeded the endpoint rate limit."
_PHONE_NUMBER = re.compile(r"^\+?[1-9][0-9 ().-]*$")  # a country code never starts with 0
MAX_TEXT, MAX_BUTTONS, MAX_TITLE = 4096, 3, 20
_TYPES = ("text", "template", "interactive", "image", "document", "video", "audio")
_FAILURES = {
    NO_WHATSAPP: {
        "code": 131026,
        "title": "Message undeliverable",
        "message": "Message undeliverable",
        "error_data": {"details": "Message Undeliverable."},
    },
    WINDOW: {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {
            "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."
        },
    },
}


def routes() -> list[Route]:
    return [Route("/messages", _messages, methods=["POST"])]


def _meta_error(status: int, message: str) -> JSONResponse:
    trace = secrets.token_urlsafe(12)
    body = {"meta": {"success": False, "http_code": status, "developer_message": message, "360dialog_trace_id": trace}}
    return JSONResponse(body, status_code=status)


def _cloud_error(code: int, message: str, details: str | None = None) -> JSONResponse:
    error: dict[str, Any] = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = secrets.token_urlsafe(16)
    return JSONResponse({"error": error}, status_code=400)


def _problem(body: dict[str, Any]) -> tuple[int, str, str | None] | None:
    """The Cloud API's complaint about a payload, or None when it is well-formed."""
    if body.get("messaging_product") != "whatsapp":
        return 100, "The parameter messaging_product is required.", None
    if not body.get("to"):
        return 100, "The parameter to is required.", None
    if not valid_recipient(str(body["to"])):
        return 100, "Invalid parameter", f"Param to must be a phone number with its country code, got {body['to']!r}"
    kind = body.get("type", "text")
    if kind not in _TYPES:
        return 100, "Invalid parameter", f"Param type must be one of {{{', '.join(_TYPES)}}}"
    content = body.get(kind)
    if not isinstance(content, dict):
        return 100, f"The parameter {kind} is required.", None
    if kind == "text":
        text = content.get("body")
        if not text:
            return 100, "The parameter text['body'] is required.", None
        if len(str(text)) > MAX_TEXT:
            return 100, "Invalid parameter", f"Param text['body'] must be at most {MAX_TEXT} characters long."
    elif kind == "template":
        if not content.get("name"):
            return 100, "The parameter template['name'] is required.", None
        if not (content.get("language") or {}).get("code"):
            return 100, "The parameter template['language'] is required.", None
    elif kind == "interactive":
        buttons = ((content.get("action") or {}).get("buttons")) or []
        if not (content.get("body") or {}).get("text"):
            return 100, "The parameter interactive['body'] is required.", None
        if not 1 <= len(buttons) <= MAX_BUTTONS:
            return 131009, "Parameter value is not valid", f"Invalid buttons count. Min allowed buttons: 1, Max allowed buttons: {MAX_BUTTONS}"
        for button in buttons:
            title = str(((button or {}).get("reply") or {}).get("title") or "")
            if not 1 <= len(title) <= MAX_TITLE:
                return 131009, "Parameter value is not valid", f"Button title length invalid. Min length: 1, Max length: {MAX_TITLE}"
    elif not (content.get("link") or content.get("id")):
        return 100, f"The parameter {kind}['link'] is required.", None
    return None


def valid_recipient(to: str) -> bool:
    """True for a `to` the Cloud API takes as a phone number: country code first, 7–15 digits."""
    return bool(_PHONE_NUMBER.match(to)) and 7 <= len(phone_digits(to)) <= 15


async def _messages(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    key = request.headers.get("d360-api-key")
    account = next((acc for acc in state.config.d360 if key and acc.api_key == key), None)
    if account is None:
        state.refuse(D360)
        return _meta_error(401, "Invalid api_key")
    try:
        body = dict(await read_params(request))
    except BadRequest as exc:
        state.refuse(D360)
        return _cloud_error(100, "Invalid parameter", str(exc))
    if problem := _problem(body):
        state.refuse(D360)
        return _cloud_error(*problem)
    ident = _identity(account)
    if refusal := await state.admit(request, D360, ident["phone_number_id"], account.rate_limit_per_s):
        state.refuse(D360)
        return _meta_error(400 if refusal.status == 429 else refusal.status, RATE_LIMIT_MESSAGE if refusal.status == 429 else refusal.description)

    kind, to = body.get("type", "text"), str(body["to"])
    wa_id = phone_digits(to)
    outcome = outcome_for(D360, wa_id)
    if outcome == WINDOW and kind == "template":
        outcome = READ  # a template opens the conversation
    wamid = "wamid." + base64.b64encode(f"{wa_id}:{next(state.message_ids)}:{secrets.token_hex(8)}".encode()).decode()
    state.record(
        D360,
        outcome,
        accepted=True,
        account=ident["phone_number_id"],
        recipient=wa_id,
        type=kind,
        text=_text_of(body),
        template=(body.get("template") or {}).get("name") if kind == "template" else None,
        payload=body,
        provider_message_id=wamid,
        send_id=None,
    )
    if account.webhook_url:
        category = "marketing" if kind == "template" else "service"
        chain = [_status(account, ident, wamid, wa_id, status, outcome, category) for status in _statuses(outcome)]
        if outcome == STOP:
            chain.append(_reply_stop(account, ident, wamid, wa_id, body))
        state.dispatcher.submit(chain)
    message: dict[str, Any] = {"id": wamid}
    if kind == "template":
        message["message_status"] = "accepted"
    return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}], "messages": [message]})


def _text_of(body: dict[str, Any]) -> str | None:
    kind = body.get("type", "text")
    content = body.get(kind) or {}
    if kind == "text":
        return content.get("body")
    if kind == "interactive":
        return (content.get("body") or {}).get("text")
    return content.get("caption")


def _statuses(outcome: str) -> list[str]:
    if outcome in _FAILURES:
        return ["failed"]
    if outcome in (READ, STOP):
        return ["sent", "delivered", "read"]
    assert outcome == DELIVER, outcome
    return ["sent", "delivered"]


def _identity(account: D360Account) -> dict[str, str]:
    """Stable WABA id, phone number id and display number derived from the API key."""
    seed = int(hashlib.sha256(account.api_key.encode()).hexdigest()[:12], 16)
    return {
        "waba_id": str(100_000_000_000_000 + seed % 10**14),
        "phone_number_id": str(200_000_000_000_000 + seed % 10**14),
        "display_phone_number": f"7495{seed % 10**7:07d}",
    }


def _webhook(account: D360Account, ident: dict[str, str], value: dict[str, Any]) -> Callback:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": ident["waba_id"],
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": ident["display_phone_number"],
                                "phone_number_id": ident["phone_number_id"],
                            },
                            **value,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }
    headers = dict(account.webhook_headers)
    return Callback(str(account.webhook_url), lambda: (payload, headers))


def _status(
    account: D360Account, ident: dict[str, str], wamid: str, wa_id: str, status: str, outcome: str, category: str
) -> Callback:
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": wa_id}
    if status == "sent":
        item["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": category}}
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": category, "type": "regular"}
    if status == "failed":
        item["errors"] = [_FAILURES[outcome]]
    return _webhook(account, ident, {"statuses": [item]})


def _reply_stop(account: D360Account, ident: dict[str, str], wamid: str, wa_id: str, body: dict[str, Any]) -> Callback:
    """The recipient answers: presses an "unsubscribe" reply button if the message had one, else writes "СТОП"."""
    buttons = ((body.get("interactive") or {}).get("action") or {}).get("buttons") or []
    unsubscribe = next((b["reply"] for b in buttons if (b.get("reply") or {}).get("id") == "unsubscribe"), None)
    message: dict[str, Any] = {
        "from": wa_id,
        "id": "wamid." + base64.b64encode(f"IN:{wa_id}:{secrets.token_hex(8)}".encode()).decode(),
        "timestamp": str(int(time.time())),
    }
    if unsubscribe is not None:
        message["type"] = "interactive"
        message["interactive"] = {"type": "button_reply", "button_reply": {"id": unsubscribe["id"], "title": unsubscribe.get("title", "")}}
        message["context"] = {"from": ident["display_phone_number"], "id": wamid}
    else:
        message["type"] = "text"
        message["text"] = {"body": "СТОП"}
    contacts = [{"profile": {"name": "Sandbox user"}, "wa_id": wa_id}]
    return _webhook(account, ident, {"contacts": contacts, "messages": [message]})

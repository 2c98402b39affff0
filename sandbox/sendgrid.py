"""Twilio SendGrid as the sandbox speaks it: `POST /v3/mail/send`, the signed Event Webhook, and
`GET /v3/user/webhooks/event/settings/signed[/{id}]` for the webhook's public key.

Auth is `Authorization: Bearer <api key>`; errors are SendGrid's `{"errors": [{"message", "field",
"help"}]}` (401 for a bad key, 400 listing every validation error, 429 "too many requests" with the
X-RateLimit-* headers). An accepted send answers 202 with an empty body and `X-Message-Id`. Every
recipient gets the e-mail outcome of `sandbox.outcomes` and its events, posted as JSON arrays (one
POST per stage of the request: processed + delivered/bounce, then open/spamreport, then click),
with the personalization's custom args as top-level fields. Each POST is signed afresh (ECDSA
P-256/SHA-256 over timestamp + body) with the account's key, here with `cryptography` directly,
deliberately not through `resources.channels`, so the tests prove two implementations agree.
Deviations: `template_id`, `send_at`, `batch_id`, `asm` and `mail_settings` are accepted and
ignored (no stored templates, everything is sent at once); the sandbox never enforces the 30 MB
message size (`X-Sandbox-Fault: 413` provokes SendGrid's 413).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import time
from http import HTTPStatus
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import SendGridAccount
from sandbox.outcomes import BOUNCE, CLICK, COMPLAIN, SENDGRID, outcome_for
from sandbox.state import SandboxState

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000  # to + cc + bcc over the whole request
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URL = re.compile(r"https?://[^\s\"'<>]+")
# Events after the send is accepted, by stage (one POST per stage and request).
_STAGES = {
    BOUNCE: (("processed", "bounce"),),
    COMPLAIN: (("processed", "delivered"), ("spamreport",)),
    CLICK: (("processed", "delivered"), ("open",), ("click",)),
}
_DELIVERED = (("processed", "delivered"),)
# Mail Send validation errors, worded as SendGrid words them (its errors reference page).
_TOO_MANY_PERSONALIZATIONS = (
    f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations per API request. You have "
    "provided {count} personalizations. Please consider splitting this into multiple requests and resending your "
    "request."
)
_TO_REQUIRED = (
    "The to array is required for all personalization objects, and must have at least one email object with a "
    "valid email address."
)
_DUPLICATE = (
    "Each unique email address in the personalizations array should only be included once. You have included "
    "{email} more than once."
)
_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires the email parameter, "
    'but may also contain a name parameter.  e.g. {"email" : "example@example.com"}  or '
    '{"email" : "example@example.com", "name" : "Example Recipient"}.'
)
_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template with a subject defined or "
    "if every personalization has a subject defined."
)
_CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined "
    "content block. We typically suggest both text/plain and text/html blocks are included, but only one block is "
    "required."
)


def routes() -> list[Route]:
    return [
        Route("/v3/mail/send", _mail_send, methods=["POST"]),
        Route("/v3/user/webhooks/event/settings/signed", _signed_settings, methods=["GET"]),
        Route("/v3/user/webhooks/event/settings/signed/{id}", _signed_settings, methods=["GET"]),
    ]


def private_key(account: SendGridAccount) -> ec.EllipticCurvePrivateKey:
    """The account's Event Webhook signing key: `signing_key` (PEM), else derived from the api key."""
    if account.signing_key:
        key = serialization.load_pem_private_key(account.signing_key.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("SendGrid signing_key must be an EC (P-256) private key")
        return key
    return _derived_keys(account.api_key)


def public_key_b64(account: SendGridAccount) -> str:
    """The public key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = private_key(account).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def webhook_id(account: SendGridAccount) -> str:
    return hashlib.sha256(f"webhook:{account.api_key}".encode()).hexdigest()[:32]


@functools.cache
def _derived_keys(api_key: str) -> ec.EllipticCurvePrivateKey:
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the order of P-256
    secret = int.from_bytes(hashlib.sha256(f"sandbox-sendgrid:{api_key}".encode()).digest()) % (order - 1) + 1
    return ec.derive_private_key(secret, ec.SECP256R1())


def _errors(status: int, *errors: tuple[str, str | None], headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"errors": [{"message": message, "field": field, "help": None if field is None else _HELP} for message, field in errors]}
    return JSONResponse(body, status_code=status, headers=headers)


def _account(state: SandboxState, request: Request) -> SendGridAccount | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return None
    return next((account for account in state.config.sendgrid if secrets.compare_digest(account.api_key, key)), None)


def _unauthorized() -> JSONResponse:
    return _errors(401, ("The provided authorization grant is invalid, expired, or revoked", None))


async def _signed_settings(request: Request) -> JSONResponse:
    """`{"id", "public_key"}` of the account's (only) Event Webhook, like the real endpoint."""
    state: SandboxState = request.app.state.sandbox
    account = _account(state, request)
    if account is None:
        return _unauthorized()
    wanted = request.path_params.get("id")
    if wanted is not None and wanted != webhook_id(account):
        return _errors(404, ("resource not found", None))
    return JSONResponse({"id": webhook_id(account), "public_key": public_key_b64(account)})


async def _mail_send(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    account = _account(state, request)
    if account is None:
        state.refuse(SENDGRID)
        return _unauthorized()
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        state.refuse(SENDGRID)
        return _errors(400, ("Bad Request", None))
    if problems := _validate(body):
        state.refuse(SENDGRID)
        return _errors(400, *problems)
    label = f"sg-{hashlib.sha256(account.api_key.encode()).hexdigest()[:8]}"
    if refusal := await state.admit(request, SENDGRID, label, account.rate_limit_per_s):
        state.refuse(SENDGRID)
        if refusal.status == HTTPStatus.TOO_MANY_REQUESTS:
            headers = {
                "X-RateLimit-Limit": str(account.rate_limit_per_s),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time()) + (refusal.retry_after or 1)),
            }
            return _errors(429, ("too many requests", None), headers=headers)
        return _errors(refusal.status, (refusal.description, None))

    message_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
    stages: list[list[dict[str, Any]]] = [[], [], []]
    for index, (recipient, personal) in enumerate(_recipients(body)):
        outcome = outcome_for(SENDGRID, recipient)
        custom_args = {**(body.get("custom_args") or {}), **(personal.get("custom_args") or {})}
        substitutions = personal.get("substitutions") or {}
        text, html = (_substitute(_content(body, kind), substitutions) for kind in ("text/plain", "text/html"))
        state.record(
            SENDGRID,
            outcome,
            accepted=True,
            account=label,
            recipient=recipient,
            subject=_substitute(personal.get("subject") or body.get("subject"), substitutions),
            text=text,
            html=html,
            headers={**(body.get("headers") or {}), **(personal.get("headers") or {})},
            variables=custom_args,
            provider_message_id=message_id,
            send_id=custom_args.get("send_id"),
        )
        sent = {
            "email": recipient,
            "smtp-id": f"<{message_id}@ismtpd-sandbox>",
            "sg_message_id": f"{message_id}.filterdrecv-sandbox-{index}.0",
            **({"category": body["categories"]} if body.get("categories") else {}),
            **custom_args,
        }
        click_url = next(iter(_URL.findall(f"{html or ''} {text or ''}")), None)
        for stage, names in enumerate(_STAGES.get(outcome, _DELIVERED)):
            stages[stage].extend(_event(name, sent, click_url) for name in names)
    if account.webhook_url:
        state.dispatcher.submit([_callback(account, events) for events in stages if events])
    return Response(status_code=202, headers={"X-Message-Id": message_id})


def _validate(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every problem SendGrid would list for this body (message, field)."""
    problems: list[tuple[str, str | None]] = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(("The personalizations field is required and must have at least one personalization.", "personalizations"))
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        problems.append((_TOO_MANY_PERSONALIZATIONS.format(count=len(personalizations)), "personalizations"))
    seen: set[str] = set()
    total = 0
    for n, personal in enumerate(personalizations):
        personal = personal if isinstance(personal, dict) else {}
        if not personal.get("to"):
            problems.append((_TO_REQUIRED, f"personalizations.{n}.to"))
        for kind in ("to", "cc", "bcc"):
            for m, item in enumerate(personal.get(kind) or []):
                email = str(item.get("email") or "") if isinstance(item, dict) else ""
                total += 1
                if not _EMAIL.match(email):
                    problems.append(("Does not contain a valid address.", f"personalizations.{n}.{kind}.{m}.email"))
                elif email.lower() in seen:
                    problems.append((_DUPLICATE.format(email=email), f"personalizations.{n}.{kind}.{m}.email"))
                seen.add(email.lower())
    if total > MAX_RECIPIENTS:
        problems.append((f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per request.", "personalizations"))
    if not _EMAIL.match(str((body.get("from") or {}).get("email") or "")):
        problems.append((_FROM_REQUIRED, "from.email"))
    template = body.get("template_id")
    every_subject = all(isinstance(p, dict) and p.get("subject") for p in personalizations)
    if not (template or body.get("subject") or every_subject):
        problems.append((_SUBJECT_REQUIRED, "subject"))
    content = body.get("content")
    if not template and (not isinstance(content, list) or not content):
        problems.append((_CONTENT_REQUIRED, "content"))
    for n, block in enumerate(content if isinstance(content, list) else []):
        if not isinstance(block, dict) or not isinstance(block.get("value"), str) or not block["value"]:
            problems.append(("The content value must be a string at least one character in length.", f"content.{n}.value"))
    return problems


def _recipients(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(address, its personalization) for every to/cc/bcc recipient, in order."""
    return [
        (str(item["email"]), personal)
        for personal in body["personalizations"]
        for kind in ("to", "cc", "bcc")
        for item in personal.get(kind) or []
    ]


def _content(body: dict[str, Any], kind: str) -> str | None:
    return next((block["value"] for block in body.get("content") or [] if block.get("type") == kind), None)


def _substitute(value: str | None, substitutions: dict[str, Any]) -> str | None:
    for tag, replacement in substitutions.items():
        value = value.replace(tag, str(replacement)) if value else value
    return value


def _event(name: str, sent: dict[str, Any], click_url: str | None) -> dict[str, Any]:
    event = {
        **sent,
        "timestamp": int(time.time()),
        "event": name,
        "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
    }
    if name == "delivered":
        event["response"] = "250 OK"
    elif name == "bounce":
        event.update(type="bounce", status="5.1.1", reason="550 5.1.1 User unknown", bounce_classification="Invalid Address")
    elif name in ("open", "click"):
        event.update(ip="203.0.113.5", useragent="Sandbox/1.0")
        if name == "open":
            event["sg_machine_open"] = False
        elif click_url:
            event["url"] = click_url
    return event


def _callback(account: SendGridAccount, events: list[dict[str, Any]]) -> Callback:
    url, key = str(account.webhook_url), private_key(account)

    def build() -> tuple[list[dict[str, Any]], dict[str, str]]:
        # Sign the exact bytes the dispatcher will send: httpx's own JSON encoding of the body.
        raw = httpx.Request("POST", url, json=events).content
        timestamp = str(int(time.time()))
        signature = key.sign(timestamp.encode() + raw, ec.ECDSA(hashes.SHA256()))
        return events, {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: timestamp}

    return Callback(url, build)  # type: ignore[arg-type]  # SendGrid posts a JSON array, not an object

"""GREEN-API as the sandbox speaks it: `POST /waInstance<id>/<method>/<apiTokenInstance>`.

Methods: `sendMessage` (chatId, message ≤ 20000 characters), `sendFileByUrl` (chatId, urlFile,
fileName, caption) and `getStateInstance`. The token in the path is the auth: an unknown instance
or a wrong token → 401. Over the instance's rate limit → 429 (GREEN-API limits each method per
instance per second). Success → `{"idMessage": "3EB0…"}`. Error bodies are `{"message": "…"}`
(the real service's error body shape is not documented; receivers key on the status).

Webhooks go to the instance's `webhook_url` with `Authorization: Bearer <webhook_token>`, one
`outgoingMessageStatus` per status (and an `incomingMessageReceived` "СТОП" for the `stop` outcome).
A send to one of the instance's `yellow_card_recipients` draws a `yellowCard` status: WhatsApp
restricted the sending number, and the dispatch engine must stop the instance.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import GreenApiInstance
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import (
    FAILED,
    GREENAPI,
    NO_ACCOUNT,
    READ,
    STOP,
    YELLOW_CARD,
    outcome_for,
    phone_digits,
)
from sandbox.state import SandboxState

MAX_TEXT = 20000
_CHAT_ID = re.compile(r"^\d{5,20}@c\.us$|^[\d-]{5,40}@g\.us$")
_SENDS = ("sendMessage", "sendFileByUrl")


def routes() -> list[Route]:
    return [Route("/waInstance{id_instance}/{method}/{token}", _dispatch, methods=["GET", "POST"])]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


async def _dispatch(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    ident, method, token = request.path_params["id_instance"], request.path_params["method"], request.path_params["token"]
    instance = next((inst for inst in state.config.greenapi if str(inst.id_instance) == ident), None)
    if instance is None or token != instance.api_token:
        if method in _SENDS:
            state.refuse(GREENAPI)
        return _error(401, "Unauthorized")
    if method == "getStateInstance":
        return JSONResponse({"stateInstance": "authorized"})
    if method not in _SENDS:
        return _error(404, f"Method {method} not found")
    try:
        params = dict(await read_params(request))
    except BadRequest as exc:
        state.refuse(GREENAPI)
        return _error(400, str(exc))
    chat = str(params.get("chatId") or "")
    text = params.get("message") if method == "sendMessage" else params.get("caption")
    problem = (
        "Validation failed. Details: 'chatId' is required" if not chat else
        "Validation failed. Details: 'chatId' must be a valid chat id (79001234567@c.us)" if not _CHAT_ID.match(chat) else
        "Validation failed. Details: 'message' is required" if method == "sendMessage" and not text else
        "Validation failed. Details: 'urlFile' is required" if method == "sendFileByUrl" and not params.get("urlFile") else
        "Validation failed. Details: 'fileName' is required" if method == "sendFileByUrl" and not params.get("fileName") else
        f"Validation failed. Details: text must be at most {MAX_TEXT} characters" if len(str(text or "")) > MAX_TEXT else
        None
    )
    if problem:
        state.refuse(GREENAPI)
        return _error(400, problem)
    if refusal := await state.admit(request, GREENAPI, ident, instance.rate_limit_per_s):
        state.refuse(GREENAPI)
        return _error(refusal.status, refusal.description)

    digits = phone_digits(chat)
    yellow = {phone_digits(number) for number in instance.yellow_card_recipients}
    outcome = YELLOW_CARD if digits in yellow else outcome_for(GREENAPI, chat)
    id_message = "3EB0" + secrets.token_hex(8).upper()
    state.record(
        GREENAPI,
        outcome,
        accepted=True,
        account=ident,
        recipient=chat,
        method=method,
        text=text,
        url_file=params.get("urlFile"),
        file_name=params.get("fileName"),
        provider_message_id=id_message,
        send_id=None,
    )
    if instance.webhook_url:
        chain = [_status(instance, chat, id_message, status) for status in _statuses(outcome)]
        if outcome == STOP:
            chain.append(_incoming_stop(instance, chat))
        state.dispatcher.submit(chain)
    return JSONResponse({"idMessage": id_message})


def _statuses(outcome: str) -> list[str]:
    return {
        NO_ACCOUNT: ["noAccount"],
        FAILED: ["sent", "failed"],
        YELLOW_CARD: ["yellowCard"],
        READ: ["sent", "delivered", "read"],
        STOP: ["sent", "delivered", "read"],
    }.get(outcome, ["sent", "delivered"])


def _instance_data(instance: GreenApiInstance) -> dict[str, Any]:
    wid = f"7900{instance.id_instance % 10**7:07d}@c.us"
    return {"idInstance": instance.id_instance, "wid": wid, "typeInstance": "whatsapp"}


def _webhook(instance: GreenApiInstance, payload: dict[str, Any]) -> Callback:
    headers = {"Authorization": f"Bearer {instance.webhook_token}"} if instance.webhook_token else {}
    return Callback(str(instance.webhook_url), lambda: (payload, headers))


def _status(instance: GreenApiInstance, chat: str, id_message: str, status: str) -> Callback:
    payload: dict[str, Any] = {
        "typeWebhook": "outgoingMessageStatus",
        "chatId": chat,
        "instanceData": _instance_data(instance),
        "timestamp": int(time.time()),
        "idMessage": id_message,
        "status": status,
        "sendByApi": True,
    }
    if status == "failed":
        payload["description"] = "Message sending failed: the sandbox's failed outcome"
    return _webhook(instance, payload)


def _incoming_stop(instance: GreenApiInstance, chat: str) -> Callback:
    payload = {
        "typeWebhook": "incomingMessageReceived",
        "instanceData": _instance_data(instance),
        "timestamp": int(time.time()),
        "idMessage": secrets.token_hex(16).upper(),
        "senderData": {
            "chatId": chat,
            "chatName": "Sandbox user",
            "sender": chat,
            "senderName": "Sandbox user",
            "senderContactName": "",
        },
        "messageData": {"typeMessage": "textMessage", "textMessageData": {"textMessage": "СТОП"}},
    }
    return _webhook(instance, payload)

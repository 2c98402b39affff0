"""The VK API as the sandbox speaks it: `/method/messages.send`, `/method/messages.sendMessageEventAnswer`
and the community's Callback API.

Every answer is HTTP 200 (except forced faults): `{"response": …}` or `{"error": {"error_code", "error_msg",
"request_params"}}`, the parameters echoed without the token, as VK does. The community is found by
its `access_token`; `v` is required on every call. `random_id` is remembered per community: a repeat
answers the first message's id and sends nothing (VK checks it over the whole message history;
here until `/_sandbox/reset`). Rate limits are answered VK's way, error 6 with HTTP 200.

Callback API events go to the community's `webhook_url` as JSON `{type, event_id, v, object, group_id,
secret?}`; the receiver must answer the body `ok` or the event is retried, with an `X-Retry-Counter`
header on each re-delivery. The event objects are built here from VK's documented shapes,
independently of `resources.channels.vk`.

A button press (`message_event`) carries its own `event_id` in the object; the community answers it
once with messages.sendMessageEventAnswer, by its own token, within a minute. The presses and their
answers are listed at `GET /_sandbox/vk/message_events`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import VkGroup
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import BLOCKED, CLICK, DENY, STOP, VK, outcome_for
from sandbox.state import SandboxState

API_VERSION = "5.199"  # the version the sandbox's Callback API events carry
ANSWER_METHOD = "messages.sendMessageEventAnswer"
MAX_TEXT = 4096
_ATTACHMENT = re.compile(r"^(photo|video|audio|doc|wall|market|poll|story|audio_message|graffiti)-?\d+_\d+(_[A-Za-z0-9]+)?$")
_INT32 = range(-(2**31), 2**31)
PRESS_TTL_S = 60.0  # a press's event_id can be answered for about a minute
MAX_EVENT_DATA = 1000  # characters (the method's schema)
MAX_SNACKBAR_TEXT = 90  # characters
INVALID = "One of the parameters specified was missing or invalid: "
NO_VERSION = (
    'Invalid request: v is required. Version param should be passed as "v". "version" param is invalid and not supported.'
)


def routes() -> list[Route]:
    return [
        Route("/method/{method}", _dispatch, methods=["GET", "POST"]),
        Route("/_sandbox/vk/message_events", _message_events, methods=["GET"]),
    ]


def _error(code: int, message: str, params: dict[str, Any]) -> JSONResponse:
    echoed = [{"key": key, "value": str(value)} for key, value in params.items() if key != "access_token"]
    return JSONResponse({"error": {"error_code": code, "error_msg": message, "request_params": echoed}})


async def _dispatch(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    method = request.path_params["method"]
    sending = method == "messages.send"
    try:
        params = dict(await read_params(request))
    except BadRequest as exc:
        if sending:
            state.refuse(VK)
        return _error(8, f"Invalid request: {exc}", {"method": method})
    params["method"] = method
    token = str(params.get("access_token") or "")
    group = next((group for group in state.config.vk if group.access_token == token), None)
    problem = (
        (5, "User authorization failed: no access_token passed.") if not token else
        (5, "User authorization failed: invalid access_token (4).") if group is None else
        (8, NO_VERSION) if not params.get("v") else
        (3, "Unknown method passed") if method not in ("messages.send", ANSWER_METHOD) else None
    )
    if problem:
        if sending:
            state.refuse(VK)
        return _error(*problem, params)
    assert group is not None
    if method == ANSWER_METHOD:
        return _answer_press(state, group, params)
    return await _send(request, state, group, params)


def _validate(params: dict[str, Any]) -> tuple[int, str] | None:
    """VK's error for a malformed messages.send, or None."""
    peer, random_id = str(params.get("peer_id") or params.get("user_id") or ""), str(params.get("random_id") or "")
    text, attachment = str(params.get("message") or ""), str(params.get("attachment") or "")
    if not peer:
        return 100, INVALID + "you should specify peer_id, user_id, domain, chat_id or user_ids param"
    if not peer.lstrip("-").isdigit():
        return 100, INVALID + "peer_id not integer"
    if not random_id:
        return 100, INVALID + "random_id is a required parameter"
    if not random_id.lstrip("-").isdigit() or int(random_id) not in _INT32:
        return 100, INVALID + "random_id not integer"
    if not text and not attachment:
        return 100, INVALID + "message is empty or invalid"
    if attachment and not all(_ATTACHMENT.match(item.strip()) for item in attachment.split(",")):
        return 100, INVALID + "attachment is invalid"
    if len(text) > MAX_TEXT:
        return 914, "Message is too long"
    if params.get("keyboard"):
        try:
            keyboard = json.loads(str(params["keyboard"]))
        except ValueError:
            keyboard = None
        if not isinstance(keyboard, dict) or not isinstance(keyboard.get("buttons"), list):
            return 911, "Keyboard format is invalid"
    return None


async def _send(request: Request, state: SandboxState, group: VkGroup, params: dict[str, Any]) -> Response:
    if problem := _validate(params):
        state.refuse(VK)
        return _error(*problem, params)
    account = str(group.group_id)
    if refusal := await state.admit(request, VK, account, group.rate_limit_per_s):
        state.refuse(VK)
        if refusal.retry_after is not None:  # over the rate limit: VK answers 200 with error 6
            return _error(6, "Too many requests per second", params)
        return PlainTextResponse(refusal.description, status_code=refusal.status)  # a front-end failure

    memory = state.memory[VK]
    random_id = int(params["random_id"])
    if random_id != 0 and (first := memory.get(("random_id", group.group_id, random_id))) is not None:
        return JSONResponse({"response": first})  # already sent: VK answers the first id and sends nothing

    peer = str(params.get("peer_id") or params.get("user_id"))
    outcome = outcome_for(VK, peer)
    keyboard = json.loads(str(params["keyboard"])) if params.get("keyboard") else None
    record = {
        "account": account,
        "recipient": peer,
        "text": str(params.get("message") or ""),
        "random_id": random_id,
        "attachment": str(params.get("attachment") or "") or None,
        "keyboard": keyboard,
        "send_id": None,
    }
    if outcome == BLOCKED:
        state.record(VK, outcome, accepted=False, provider_message_id=None, **record)
        return _error(901, "Can't send messages for users without permission", params)

    message_id = next(state.message_ids) % 2_000_000_000 + 1
    conversation = ("conversation", group.group_id, peer)
    conversation_message_id = memory[conversation] = memory.get(conversation, 0) + 1
    if random_id != 0:
        memory[("random_id", group.group_id, random_id)] = message_id
    state.record(VK, outcome, accepted=True, provider_message_id=str(message_id), **record)
    if group.webhook_url and (event := _event_for(outcome, int(peer), conversation_message_id, keyboard)):
        if event[0] == "message_event":
            _remember_press(state, group, event[1])
        state.dispatcher.submit([_callback(group, *event)])
    return JSONResponse({"response": message_id})


def _presses(state: SandboxState) -> dict[str, dict[str, Any]]:
    """Button presses the sandbox made: the press's event_id → who pressed, and the answer (forgotten on reset)."""
    return state.memory[VK].setdefault("message_events", {})


def _remember_press(state: SandboxState, group: VkGroup, obj: dict[str, Any]) -> None:
    _presses(state)[obj["event_id"]] = {
        "group_id": group.group_id, "user_id": obj["user_id"], "peer_id": obj["peer_id"], "payload": obj["payload"],
        "pressed_at": time.monotonic(), "answer": None, "refused_answers": 0,
    }


def _answer_press(state: SandboxState, group: VkGroup, params: dict[str, Any]) -> JSONResponse:
    """messages.sendMessageEventAnswer: once per press of this community, within PRESS_TTL_S.

    Missing or malformed parameters, and a press that is unknown, another community's or another
    user's, expired or already answered, are all error 100 (VK has no error of its own for a spent
    press; the wording after the colon is the sandbox's).
    """
    if problem := _answer_problem(params):
        return _error(100, INVALID + problem, params)
    press = _presses(state).get(str(params["event_id"]))
    spent = press is None or (
        press["group_id"] != group.group_id
        or (press["user_id"], press["peer_id"]) != (int(params["user_id"]), int(params["peer_id"]))
        or press["answer"] is not None
        or time.monotonic() - press["pressed_at"] > PRESS_TTL_S
    )
    if spent:
        if press is not None:
            press["refused_answers"] += 1
        return _error(100, INVALID + "event_id is invalid, expired or already answered", params)
    assert press is not None
    press["answer"] = {"event_data": json.loads(params["event_data"]) if params.get("event_data") else None}
    state.stats[VK].button_answers += 1
    return JSONResponse({"response": 1})


def _answer_problem(params: dict[str, Any]) -> str | None:
    """What is wrong with a sendMessageEventAnswer call's parameters, or None."""
    if not params.get("event_id"):
        return "event_id is a required parameter"
    for name in ("user_id", "peer_id"):
        value = str(params.get(name) or "")
        if not value:
            return f"{name} is a required parameter"
        if not value.lstrip("-").isdigit():
            return f"{name} not integer"
    if not params.get("event_data"):
        return None
    raw = str(params["event_data"])
    if len(raw) > MAX_EVENT_DATA:
        return f"event_data is longer than {MAX_EVENT_DATA} characters"
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    action = data.get("type") if isinstance(data, dict) else None
    if action == "show_snackbar":
        text = data.get("text")
        return None if isinstance(text, str) and 0 < len(text) <= MAX_SNACKBAR_TEXT else "event_data.text is invalid"
    if action == "open_link":
        link = data.get("link")
        return None if isinstance(link, str) and link.startswith(("https://", "http://")) else "event_data.link is invalid"
    if action == "open_app":
        return None if type(data.get("app_id")) is int else "event_data.app_id is invalid"
    return "event_data is invalid"


async def _message_events(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    listed = [
        {"event_id": event_id, **{key: value for key, value in press.items() if key != "pressed_at"}}
        for event_id, press in _presses(state).items()
    ]
    return JSONResponse({"message_events": listed})


def _event_for(outcome: str, peer: int, conversation_message_id: int, keyboard: Any) -> tuple[str, dict[str, Any]] | None:
    """The Callback API event an outcome produces after the send: (type, object), or None."""
    if outcome == DENY:
        return "message_deny", {"user_id": peer}
    if outcome == STOP:
        message = {
            "date": int(time.time()), "from_id": peer, "id": 0, "out": 0, "peer_id": peer, "text": "Стоп",
            "conversation_message_id": conversation_message_id + 1, "fwd_messages": [], "important": False,
            "random_id": 0, "attachments": [], "is_hidden": False,
        }
        client_info = {"button_actions": ["text", "vkpay", "open_app", "location", "open_link", "callback"],
                       "keyboard": True, "inline_keyboard": True, "carousel": True, "lang_id": 0}
        return "message_new", {"message": message, "client_info": client_info}
    if outcome == CLICK and (payload := _first_callback_payload(keyboard)) is not None:
        return "message_event", {
            "user_id": peer, "peer_id": peer, "event_id": secrets.token_hex(6),
            "payload": payload, "conversation_message_id": conversation_message_id,
        }
    return None


def _first_callback_payload(keyboard: Any) -> Any:
    """The parsed payload of the keyboard's first callback button ({} when it has none), or None."""
    for row in keyboard.get("buttons", []) if isinstance(keyboard, dict) else []:
        for button in row if isinstance(row, list) else []:
            action = button.get("action") if isinstance(button, dict) else None
            if isinstance(action, dict) and action.get("type") == "callback":
                try:
                    payload = json.loads(action.get("payload") or "{}")
                except ValueError:
                    payload = {}
                return payload if isinstance(payload, dict) else {}
    return None


def _callback(group: VkGroup, event_type: str, obj: dict[str, Any]) -> Callback:
    event = {"group_id": group.group_id, "type": event_type, "event_id": secrets.token_hex(20), "v": API_VERSION, "object": obj}
    if group.secret:
        event["secret"] = group.secret
    attempts = 0

    def build() -> tuple[dict[str, Any], dict[str, str]]:
        nonlocal attempts
        attempts += 1  # the same event (same event_id) on every attempt; re-deliveries are counted
        return event, ({"X-Retry-Counter": str(attempts - 1)} if attempts > 1 else {})

    return Callback(str(group.webhook_url), build, expected_body="ok")

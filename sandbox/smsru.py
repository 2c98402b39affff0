"""SMS.ru as the sandbox speaks it: `/sms/send`, and its delivery callbacks.

GET or POST, parameters in the query string or a form; `api_id` authenticates (a `login` without a
matching `api_id` is SMS.ru's 301). With `json=1` the answer is
`{"status": "OK", "status_code": 100, "sms": {<phone>: {"status", "status_code", "sms_id" | "status_text"}},
"balance": …}`; a request-level error is `{"status": "ERROR", "status_code": n, "status_text": "…"}`.
Without `json=1` the plain-text form answers: the status code, then one line per number (its sms_id
or its error code), then `balance=…`. HTTP 200 either way, except forced faults.

- 200 bad api_id; 203 no text; 205 text over 8 parts; 202 per number: not a phone number.
- Per number by outcome (`sandbox.outcomes`): 209 stop list and 207 no route at send; the rest
  are accepted with an sms_id and get a delivery callback.
- 206 (request level) when the account's `rate_limit_per_s` is exceeded: SMS.ru publishes no
  per-second answer, 206 ("daily limit") is its nearest; the status_text says it is the sandbox's.

Callbacks go to the account's `webhook_url` (what `callback/add` registers) as form POSTs with the
record in `data[0]`: "sms_status\\n<sms_id>\\n<code>\\n<unix time>". The receiver must answer the
body `100`; anything else is retried.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import SmsRuAccount
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import (
    EXPIRED,
    NO_ROUTE,
    SMSRU,
    STOPLIST,
    UNDELIVERABLE,
    outcome_for,
    phone_digits,
)
from sandbox.state import SandboxState

BALANCE = 1000.0
MAX_PARTS = 8
_FINAL = {UNDELIVERABLE: 108, EXPIRED: 104}  # outcome → delivery status in the callback (else 103)
_TEXTS = {
    200: "Неправильный api_id",
    202: "Неправильно указан номер телефона получателя, либо на него нет маршрута",
    203: "Нет текста сообщения",
    205: "Сообщение слишком длинное (превышает 8 СМС)",
    206: "Превышен лимит на отправку сообщений (песочница: rate_limit_per_s)",
    207: "На этот номер нет маршрута для доставки сообщений",
    209: "Вы добавили этот номер (или один из номеров) в стоп-лист",
    301: "Неправильный пароль, либо пользователь не найден",
}


def routes() -> list[Route]:
    return [Route("/sms/send", _send, methods=["GET", "POST"])]


def _answer(body: dict[str, Any], as_json: bool) -> Response:
    if as_json:
        return JSONResponse(body)
    lines = [str(body["status_code"])]
    for entry in (body.get("sms") or {}).values():
        lines.append(entry.get("sms_id") or str(entry["status_code"]))
    if "balance" in body:
        lines.append(f"balance={body['balance']}")
    return PlainTextResponse("\n".join(lines))


def _request_error(code: int, as_json: bool) -> Response:
    return _answer({"status": "ERROR", "status_code": code, "status_text": _TEXTS[code]}, as_json)


async def _send(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    try:
        params = [(name, str(value)) for name, value in await read_params(request)]
    except BadRequest:
        state.refuse(SMSRU)
        return _request_error(203, True)
    fields = dict(params)
    as_json = fields.get("json") == "1"
    api_id = fields.get("api_id", "")
    account = next((acc for acc in state.config.smsru if api_id and acc.api_id == api_id), None)
    if account is None:
        state.refuse(SMSRU)
        return _request_error(301 if fields.get("login") and not api_id else 200, as_json)
    # `to` + `msg` (one text, a comma list), or `to[<phone>]=<text>` (one text per number)
    texts = {name[3:-1]: value for name, value in params if name.startswith("to[") and name.endswith("]")}
    if not texts:
        texts = {phone.strip(): fields.get("msg", "") for phone in fields.get("to", "").split(",") if phone.strip()}
    problem = (
        202 if not texts else
        203 if not all(texts.values()) else
        205 if any(_parts(text) > MAX_PARTS for text in texts.values()) else None
    )
    if problem:
        state.refuse(SMSRU)
        return _request_error(problem, as_json)
    if refusal := await state.admit(request, SMSRU, account.api_id, account.rate_limit_per_s):
        state.refuse(SMSRU)
        if refusal.retry_after is not None:
            return _request_error(206, as_json)
        return PlainTextResponse(refusal.description, status_code=refusal.status)

    entries: dict[str, dict[str, Any]] = {}
    for raw, text in texts.items():
        phone = phone_digits(raw)
        if not 10 <= len(phone) <= 15:
            entries[raw] = {"status": "ERROR", "status_code": 202, "status_text": _TEXTS[202]}
            continue
        outcome = outcome_for(SMSRU, phone)
        record = {"account": account.api_id, "recipient": phone, "text": text, "send_id": None,
                  "test": fields.get("test") == "1", "sender": fields.get("from")}
        if outcome in (STOPLIST, NO_ROUTE):
            code = 209 if outcome == STOPLIST else 207
            state.record(SMSRU, outcome, accepted=False, provider_message_id=None, **record)
            entries[phone] = {"status": "ERROR", "status_code": code, "status_text": _TEXTS[code]}
            continue
        number = next(state.message_ids)
        sms_id = f"{number // 10**8 % 10**6:06d}-{number % 10**8:08d}"
        state.record(SMSRU, outcome, accepted=True, provider_message_id=sms_id, **record)
        entries[phone] = {"status": "OK", "status_code": 100, "sms_id": sms_id}
        if account.webhook_url:
            state.dispatcher.submit([_callback(account, sms_id, _FINAL.get(outcome, 103))])
    return _answer({"status": "OK", "status_code": 100, "sms": entries, "balance": BALANCE}, as_json)


def _parts(text: str) -> int:
    single, per_part = (160, 153) if all(ord(char) < 128 for char in text) else (70, 67)
    return 1 if len(text) <= single else -(-len(text) // per_part)


def _callback(account: SmsRuAccount, sms_id: str, code: int) -> Callback:
    record = f"sms_status\n{sms_id}\n{code}\n{int(time.time())}"

    def build() -> tuple[dict[str, str], dict[str, str]]:
        return {"data[0]": record}, {}

    return Callback(str(account.webhook_url), build, form=True, expected_body="100")

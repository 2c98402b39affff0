"""SMSC.ru as the sandbox speaks it: `/sys/send.php` (SMS and `hlr=1` lookups) and `/sys/status.php`.

GET or POST, parameters in the query string or a form. Auth is `login` + `psw` (the password or its
lower-case MD5, as SMSC accepts). Answers are HTTP 200 either way, in the format `fmt` asks for
(`sandbox.smsc_formats`: 0 a sentence, the default; 1 comma-separated, what SMSC's own client modules
ask for; 2 XML; 3 JSON, what the product's connector asks for): the message `id` and `cnt` parts
(plus `cost` with `cost=2`, and `balance` with `cost=3`), or the error and its code, with the
message's `id` for errors about the message (7, 8) as SMSC documents.

- 1 bad parameters (no phones, no text, an `id` outside 0…2147483647; 0, what SMSC's modules send
  by default, means "none given"); 2 bad login/password; 7 bad number format; 8 cannot be delivered
  (the `no_route` outcome); 9 an identical accepted send request within 60 s, which sends nothing
  (SMSC's duplicate guard); 4 over the account's `rate_limit_per_s` (SMSC's "IP temporarily
  blocked", its nearest documented answer).
- Messages longer than SMSC's cap (the sandbox allows 1000 characters) → error 1.
- Not emulated: `cost=1` (price only, no send) is sent like any message.

Status callbacks go to the account's `webhook_url` as form POSTs: `id`, `phone`, `status`, `err`,
`ts`, `time`, `md5` = md5("<id>:<phone>:<status>:<password>"). SMSC's real field names are unconfirmed;
this is the assumed shape (see `resources.channels.smsc`). The signature is computed here
independently of `resources.channels.smsc`. HLR results are read with `status.php`: status, time and
err; HLR lookups add the network (imsi, msc, mcc, mnc, cn, net, rcn, rnet); `all=1` adds the send
time, phone, cost, sender, status name and text (for `fmt` 0 and 1 only on SMS: an HLR lookup keeps
its all=0 layout there, the sandbox not knowing SMSC's longer one).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sandbox import smsc_formats
from sandbox.callbacks import Callback
from sandbox.config import SmscAccount
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import (
    EXPIRED,
    NO_ROUTE,
    SMSC,
    STOPLIST,
    UNDELIVERABLE,
    outcome_for,
    phone_digits,
)
from sandbox.state import SandboxState

MAX_TEXT = 1000  # characters the sandbox accepts in one request
DUPLICATE_WINDOW_S = 60.0
BALANCE = "1000.00"
# outcome → final (status, err) of an SMS; HLR lookups read the same outcome (see sandbox.outcomes).
_FINAL = {STOPLIST: (23, 250), UNDELIVERABLE: (20, 1), EXPIRED: (3, 6)}
_HLR = {STOPLIST: (23, 250), UNDELIVERABLE: (20, 1), EXPIRED: (20, 6)}
_ERROR_TEXT = {
    1: "parameters error", 2: "authorise error", 4: "IP temporarily blocked", 7: "invalid phone",
    8: "message couldn't be delivered", 9: "duplicate request, wait a minute",
}
_STATUS_NAMES = {-3: "Not found", 1: "Delivered", 3: "Expired", 20: "Impossible to deliver", 23: "Prohibited"}


def routes() -> list[Route]:
    return [
        Route("/sys/send.php", _send, methods=["GET", "POST"]),
        Route("/sys/status.php", _status, methods=["GET", "POST"]),
    ]


def signature(message_id: str, phone: str, status: int, password: str) -> str:
    return hashlib.md5(f"{message_id}:{phone}:{status}:{password}".encode()).hexdigest()


def _error(fmt: str, code: int, message_id: int | None = None) -> Response:
    return smsc_formats.error(fmt, code, _ERROR_TEXT.get(code, "error"), message_id)


def _account(state: SandboxState, params: dict[str, str]) -> SmscAccount | None:
    login, psw = params.get("login", ""), params.get("psw", "")
    for account in state.config.smsc:
        if login == account.login and psw in (account.password, hashlib.md5(account.password.encode()).hexdigest()):
            return account
    return None


def _format(value: str | None) -> str:
    """The answer format asked for; SMSC answers an unknown one like the default."""
    return value if value in smsc_formats.FORMATS else smsc_formats.DEFAULT_FORMAT


async def _params(request: Request) -> dict[str, str] | Response:
    try:
        return {name: str(value) for name, value in await read_params(request)}
    except BadRequest:
        return _error(_format(request.query_params.get("fmt")), 1)


async def _send(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    params = await _params(request)
    if isinstance(params, Response):
        state.refuse(SMSC)
        return params
    fmt = _format(params.get("fmt"))
    account = _account(state, params)
    if account is None:
        state.refuse(SMSC)
        return _error(fmt, 2)
    hlr = params.get("hlr") == "1"
    phones = [phone.strip() for phone in params.get("phones", "").replace(";", ",").split(",") if phone.strip()]
    text = params.get("mes", "")
    given_id = params.get("id", "")
    bad_id = bool(given_id) and not (given_id.isdigit() and int(given_id) <= 2147483647)
    if bad_id or not phones or (not hlr and not text) or len(text) > MAX_TEXT:
        state.refuse(SMSC)
        return _error(fmt, 1)
    message_id = int(given_id or 0) or next(state.message_ids) % 2147483647 + 1
    if not all(10 <= len(phone_digits(phone)) <= 15 for phone in phones):
        state.refuse(SMSC)
        return _error(fmt, 7, message_id)
    if refusal := await state.admit(request, SMSC, account.login, account.rate_limit_per_s):
        state.refuse(SMSC)
        if refusal.retry_after is not None:
            return _error(fmt, 4)
        return PlainTextResponse(refusal.description, status_code=refusal.status)

    memory = state.memory[SMSC]
    request_key = ("request", account.login, tuple(sorted((k, v) for k, v in params.items() if k != "psw")))
    now = time.monotonic()
    if (first := memory.get(request_key)) is not None and now - first < DUPLICATE_WINDOW_S:
        state.refuse(SMSC)
        return _error(fmt, 9)
    digits = [phone_digits(phone) for phone in phones]
    outcomes = {phone: outcome_for(SMSC, phone) for phone in digits}
    if len(digits) == 1 and outcomes[digits[0]] == NO_ROUTE:
        state.record(SMSC, NO_ROUTE, accepted=False, account=account.login, recipient=digits[0], text=text,
                     provider_message_id=None, send_id=None, hlr=hlr)
        return _error(fmt, 8, message_id)

    parts = _parts(text) if not hlr else 1
    cost_each = 1.5 * parts
    for phone in digits:
        outcome = outcomes[phone]
        if outcome == NO_ROUTE:  # in a multi-number request an undeliverable number is skipped, not fatal
            state.record(SMSC, outcome, accepted=False, account=account.login, recipient=phone, text=text,
                         provider_message_id=None, send_id=None, hlr=hlr)
            continue
        status, err = (_HLR if hlr else _FINAL).get(outcome, (1, 0))
        memory[("status", account.login, str(message_id), phone)] = {
            "status": status, "err": err, "hlr": hlr, "text": text, "sent_at": int(time.time()),
            "sender": params.get("sender", ""), "cost": f"{cost_each:.2f}",
        }
        state.record(SMSC, outcome, accepted=True, account=account.login, recipient=phone, text=text,
                     provider_message_id=f"{message_id}:{phone}", send_id=None, hlr=hlr, parts=parts)
        if account.webhook_url:
            state.dispatcher.submit([_callback(account, str(message_id), phone, status, err)])
    memory[request_key] = now
    cost_mode = params.get("cost")
    cost = f"{cost_each * len(digits):.2f}" if cost_mode in ("2", "3") else None
    return smsc_formats.sent(fmt, message_id, parts * len(digits), cost, BALANCE if cost_mode == "3" else None)


async def _status(request: Request) -> Response:
    """status.php?phone&id[&fmt][&all=1]: the final state at once (the sandbox's network is instant)."""
    state: SandboxState = request.app.state.sandbox
    params = await _params(request)
    if isinstance(params, Response):
        return params
    fmt = _format(params.get("fmt"))
    account = _account(state, params)
    if account is None:
        return _error(fmt, 2)
    if not params.get("phone") or not params.get("id"):
        return _error(fmt, 1)
    phone = phone_digits(params["phone"])
    entry = state.memory[SMSC].get(("status", account.login, params["id"], phone))
    return _status_answer(fmt, phone, entry, detailed=params.get("all") in ("1", "2"))


def _status_answer(fmt: str, phone: str, entry: dict[str, Any] | None, detailed: bool) -> Response:
    """One message's status in SMSC's layout: status, time, err; an HLR lookup's network; with
    `all=1` the message's details. An unknown (id, phone) pair is status -3."""
    if entry is None:
        return smsc_formats.render(fmt, [("status", -3), ("last_date", ""), ("last_timestamp", 0), ("err", 0)],
                                   "Status = -3, check_time = , err = 0", xml_root="sms", values=[-3, 0, 0])
    now = int(time.time())
    last_date = time.strftime("%d.%m.%Y %H:%M:%S", time.localtime(now))
    fields: list[tuple[str, Any]] = [("status", entry["status"]), ("last_date", last_date), ("last_timestamp", now),
                                     ("err", entry["err"])]
    values: list[Any] = [entry["status"], now, entry["err"]]
    sentence = f"Status = {entry['status']}, check_time = {last_date}, err = {entry['err']}"
    tail: list[tuple[str, Any]] = []
    if entry["hlr"]:
        live = entry["status"] == 1
        tail = [("imsi", f"25001{phone[-10:]}" if live else ""), ("msc", "79000000001" if live else ""), ("mcc", "250"),
                ("mnc", "01" if live else ""), ("cn", "Russia"), ("net", "Sandbox Mobile" if live else ""), ("rcn", ""),
                ("rnet", "")]
    elif detailed:
        sent_date = time.strftime("%d.%m.%Y %H:%M:%S", time.localtime(entry["sent_at"]))
        tail = [("send_date", sent_date), ("send_timestamp", entry["sent_at"]), ("phone", phone), ("cost", entry["cost"]),
                ("sender_id", entry["sender"]), ("status_name", _STATUS_NAMES.get(entry["status"], "")),
                ("message", entry["text"])]
    fields += tail
    values += [value for name, value in tail if name != "send_date"]
    sentence += "".join(f", {name} = {value}" for name, value in tail if name != "send_timestamp")
    if entry["hlr"]:
        fields.append(("type", "HLR"))
        if detailed:
            fields += [("phone", phone), ("message", entry["text"]), ("sender_id", entry["sender"])]
    return smsc_formats.render(fmt, fields, sentence, xml_root="sms", values=values)


def _parts(text: str) -> int:
    """SMS parts: 160/153 GSM-7 characters or 70/67 UCS-2 (a close count; extension characters ignored)."""
    single, per_part = (160, 153) if all(ord(char) < 128 for char in text) else (70, 67)
    return 1 if len(text) <= single else -(-len(text) // per_part)


def _callback(account: SmscAccount, message_id: str, phone: str, status: int, err: int) -> Callback:
    def build() -> tuple[dict[str, str], dict[str, str]]:
        now = int(time.time())
        form = {"id": message_id, "phone": phone, "status": str(status), "err": str(err), "ts": str(now),
                "time": time.strftime("%d.%m.%Y %H:%M:%S", time.localtime(now)),
                "md5": signature(message_id, phone, status, account.password)}
        return form, {}

    return Callback(str(account.webhook_url), build, form=True)

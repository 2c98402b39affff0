"""SMSC.ru as the sandbox speaks it: `/sys/send.php` (SMS and `hlr=1` lookups) and `/sys/status.php`.

GET or POST, parameters in the query string or a form. Auth is `login` + `psw` (the password or its
lower-case MD5, as SMSC accepts); answers are SMSC's `fmt=3` JSON with HTTP 200 either way:
`{"id": n, "cnt": parts}` (plus `cost`, `balance` with `cost=3`) or `{"error": "…", "error_code": n}`.
Deliberate deviation: only `fmt=3` is spoken; other formats get a plain-text error.

- 1 bad parameters (no phones, no text, an `id` outside 1…2147483647); 2 bad login/password; 7 bad
  number format; 8 cannot be delivered (the `no_route` outcome); 9 an identical accepted send
  request within 60 s, which sends nothing (SMSC's duplicate guard); 4 over the account's
  `rate_limit_per_s` (SMSC's "IP temporarily blocked", its nearest documented answer).
- Messages longer than SMSC's cap (the sandbox allows 1000 characters) → error 1.

Status callbacks go to the account's `webhook_url` as form POSTs: `id`, `phone`, `status`, `err`,
`ts`, `time`, `md5` = md5("<id>:<phone>:<status>:<password>"). SMSC's real field names are unconfirmed;
this is the assumed shape (see `resources.channels.smsc`). The signature is computed here
independently of `resources.channels.smsc`. HLR results are read with `status.php`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

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


def routes() -> list[Route]:
    return [
        Route("/sys/send.php", _send, methods=["GET", "POST"]),
        Route("/sys/status.php", _status, methods=["GET", "POST"]),
    ]


def signature(message_id: str, phone: str, status: int, password: str) -> str:
    return hashlib.md5(f"{message_id}:{phone}:{status}:{password}".encode()).hexdigest()


def _error(code: int) -> JSONResponse:
    return JSONResponse({"error": _ERROR_TEXT.get(code, "error"), "error_code": code})


def _account(state: SandboxState, params: dict[str, str]) -> SmscAccount | None:
    login, psw = params.get("login", ""), params.get("psw", "")
    for account in state.config.smsc:
        if login == account.login and psw in (account.password, hashlib.md5(account.password.encode()).hexdigest()):
            return account
    return None


async def _params(request: Request) -> dict[str, str] | Response:
    try:
        params = {name: str(value) for name, value in await read_params(request)}
    except BadRequest:
        return _error(1)
    if params.get("fmt") != "3":
        return PlainTextResponse("ERROR = 1 (the sandbox answers fmt=3 only)")
    return params


async def _send(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    params = await _params(request)
    if isinstance(params, Response):
        state.refuse(SMSC)
        return params
    account = _account(state, params)
    if account is None:
        state.refuse(SMSC)
        return _error(2)
    hlr = params.get("hlr") == "1"
    phones = [phone.strip() for phone in params.get("phones", "").replace(";", ",").split(",") if phone.strip()]
    text = params.get("mes", "")
    given_id = params.get("id", "")
    problem = (
        1 if not phones or (not hlr and not text) or len(text) > MAX_TEXT else
        1 if given_id and not (given_id.isdigit() and 1 <= int(given_id) <= 2147483647) else
        7 if not all(10 <= len(phone_digits(phone)) <= 15 for phone in phones) else None
    )
    if problem:
        state.refuse(SMSC)
        return _error(problem)
    if refusal := await state.admit(request, SMSC, account.login, account.rate_limit_per_s):
        state.refuse(SMSC)
        if refusal.retry_after is not None:
            return _error(4)
        return PlainTextResponse(refusal.description, status_code=refusal.status)

    memory = state.memory[SMSC]
    request_key = ("request", account.login, tuple(sorted((k, v) for k, v in params.items() if k != "psw")))
    now = time.monotonic()
    if (first := memory.get(request_key)) is not None and now - first < DUPLICATE_WINDOW_S:
        state.refuse(SMSC)
        return _error(9)
    digits = [phone_digits(phone) for phone in phones]
    outcomes = {phone: outcome_for(SMSC, phone) for phone in digits}
    if len(digits) == 1 and outcomes[digits[0]] == NO_ROUTE:
        state.record(SMSC, NO_ROUTE, accepted=False, account=account.login, recipient=digits[0], text=text,
                     provider_message_id=None, send_id=None, hlr=hlr)
        return _error(8)

    message_id = int(given_id) if given_id else next(state.message_ids) % 2147483647 + 1
    parts = _parts(text) if not hlr else 1
    for phone in digits:
        outcome = outcomes[phone]
        if outcome == NO_ROUTE:  # in a multi-number request an undeliverable number is skipped, not fatal
            state.record(SMSC, outcome, accepted=False, account=account.login, recipient=phone, text=text,
                         provider_message_id=None, send_id=None, hlr=hlr)
            continue
        status, err = (_HLR if hlr else _FINAL).get(outcome, (1, 0))
        memory[("status", account.login, str(message_id), phone)] = {"status": status, "err": err, "hlr": hlr, "text": text}
        state.record(SMSC, outcome, accepted=True, account=account.login, recipient=phone, text=text,
                     provider_message_id=f"{message_id}:{phone}", send_id=None, hlr=hlr, parts=parts)
        if account.webhook_url:
            state.dispatcher.submit([_callback(account, str(message_id), phone, status, err)])
    memory[request_key] = now
    answer: dict[str, Any] = {"id": message_id, "cnt": parts * len(digits)}
    if params.get("cost") == "3":
        answer |= {"cost": f"{1.5 * parts * len(digits):.2f}", "balance": BALANCE}
    return JSONResponse(answer)


async def _status(request: Request) -> Response:
    """status.php?phone&id&fmt=3[&all=1]: the final state at once (the sandbox's network is instant)."""
    state: SandboxState = request.app.state.sandbox
    params = await _params(request)
    if isinstance(params, Response):
        return params
    account = _account(state, params)
    if account is None:
        return _error(2)
    if not params.get("phone") or not params.get("id"):
        return _error(1)
    phone = phone_digits(params["phone"])
    entry = state.memory[SMSC].get(("status", account.login, params["id"], phone))
    if entry is None:
        return JSONResponse({"status": -3, "last_date": "", "last_timestamp": 0})
    now = int(time.time())
    answer: dict[str, Any] = {"status": entry["status"], "last_date": time.strftime("%d.%m.%Y %H:%M:%S", time.localtime(now)),
                              "last_timestamp": now}
    if entry["err"]:
        answer["err"] = entry["err"]
    if entry["hlr"]:
        live = entry["status"] == 1
        answer |= {"imsi": f"25001{phone[-10:]}" if live else "", "mcc": "250", "mnc": "01" if live else "",
                   "cn": "Russia", "net": "Sandbox Mobile" if live else "", "rcn": "", "rnet": "", "type": "HLR"}
    if params.get("all") in ("1", "2"):
        answer |= {"phone": phone, "message": entry["text"], "sender_id": ""}
    return JSONResponse(answer)


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

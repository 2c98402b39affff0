"""SMSC's answer formats, chosen per request with `fmt`: 0 a sentence (the default), 1 comma-separated
values, 2 XML, 3 JSON. Every answer is HTTP 200.

SMSC's own client modules ask for `fmt=1` and split the answer on commas; the product's connector
asks for `fmt=3`. An answer is an ordered list of (name, value) fields: JSON and XML carry the names,
`fmt=1` the values in that order, and `fmt=0` a sentence the caller words (SMSC's wording differs per
answer: "OK - 1 SMS, ID - 7", "ERROR = 2 (authorise error)", "Status = 1, check_time = …").
Source: smsc.ru/api/http (send answers and error codes, status answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from starlette.responses import JSONResponse, PlainTextResponse, Response

FORMATS = ("0", "1", "2", "3")
DEFAULT_FORMAT = "0"

Fields = Sequence[tuple[str, Any]]


def render(fmt: str, fields: Fields, sentence: str, xml_root: str = "result", values: Sequence[Any] | None = None) -> Response:
    """The answer in format `fmt` (one of FORMATS); `values` replaces the fields' values for `fmt=1`
    where SMSC lists other fields than it names (status.php gives the time only as a timestamp)."""
    if fmt == "3":
        return JSONResponse(dict(fields))
    if fmt == "2":
        inner = "".join(f"<{name}>{escape(str(value))}</{name}>" for name, value in fields)
        return Response(f"<{xml_root}>{inner}</{xml_root}>", media_type="text/xml; charset=utf-8")
    if fmt == "1":
        return PlainTextResponse(",".join(str(value) for value in (values if values is not None else [v for _, v in fields])))
    return PlainTextResponse(sentence)


def sent(fmt: str, message_id: int, parts: int, cost: str | None = None, balance: str | None = None) -> Response:
    """A send (or HLR request) accepted: id and parts, with `cost=2` the cost, with `cost=3` also the balance."""
    fields: list[tuple[str, Any]] = [("id", message_id), ("cnt", parts)]
    sentence = f"OK - {parts} SMS, ID - {message_id}"
    if cost is not None:
        fields.append(("cost", cost))
        sentence += f", COST - {cost}"
    if balance is not None:
        fields.append(("balance", balance))
        sentence += f", BALANCE - {balance}"
    return render(fmt, fields, sentence)


def error(fmt: str, code: int, description: str, message_id: int | None = None) -> Response:
    """A refusal. SMSC names the message for errors about the message itself (3, 6, 7, 8) and not for
    errors about the request (1, 2, 4, 5, 9); `fmt=1` writes "<id or 0>,-<code>"."""
    fields: list[tuple[str, Any]] = [("error", description), ("error_code", code)]
    sentence = f"ERROR = {code} ({description})"
    if message_id is not None:
        fields.append(("id", message_id))
        sentence += f", ID - {message_id}"
    return render(fmt, fields, sentence, values=[message_id or 0, -code])

"""The providers the sandbox emulates: name → module exposing ``routes()`` (Starlette routes).

Each module is self-contained (paths, auth, body shapes, error codes, callbacks) and records what
it receives under its provider name; adding a provider is one module and one line here.
"""

from __future__ import annotations

from types import ModuleType

from sandbox import d360, greenapi, mailgun, telegram, twilio
from sandbox import smsc, smsru, vk
from sandbox import sendgrid

PROVIDER_MODULES: dict[str, ModuleType] = {
    "telegram": telegram,
    "mailgun": mailgun,
    "twilio": twilio,
    "d360": d360,
    "greenapi": greenapi,
    "vk": vk,
    "smsc": smsc,
    "smsru": smsru,
    "sendgrid": sendgrid,
}

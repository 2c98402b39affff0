"""What happens to a message, decided by its recipient alone, so every run is reproducible.

    bucket = int(sha256(recipient.encode()).hexdigest()[:8], 16) % 100

E-mail (providers "mailgun" and "sendgrid"); a local part starting with "bounce", "complain", "click"
or "deliver" (e.g. ``bounce+3@example.ru``) forces that outcome, otherwise the bucket decides:

    bucket   outcome    Mailgun events after the send is accepted   (SendGrid events)
    0–3      bounce     `failed` severity=permanent, reason "bounce", delivery-status code 550   (processed, bounce)
    4–5      complain   `delivered`, then `complained`               (processed, delivered, spamreport)
    6–29     click      `delivered`, `opened`, `clicked`             (processed, delivered, open, click)
    30–99    deliver    `delivered`                                  (processed, delivered)

Telegram (provider "telegram", recipient = chat id as a string):

    bucket   outcome    what the sandbox does
    0–2      blocked    sendMessage answers 403 "Forbidden: bot was blocked by the user"; no callbacks
    3–24     click      accepts; then a `callback_query` update pressing the first button
    25–99    deliver    accepts; no callback (the Bot API reports no deliveries)

WhatsApp/SMS providers ("twilio", "d360", "greenapi") hash the phone's digits only, so "+7 916 …",
"whatsapp:+7916…", "7916…" and "7916…@c.us" share a bucket, and a number behaves alike at every
provider's table position:

Twilio (status callbacks in order; SMS has no `read`, so read → sent, delivered):
    0–2      opted_out    Messages.json answers 400 code 21610; no message, no callbacks
    3–5      undelivered  201; `sent`, then `undelivered` ErrorCode 30003
    6–8      window       WhatsApp `Body` (no ContentSid): 201, then `failed` ErrorCode 63016;
                          a ContentSid template, or SMS, is delivered (`sent`, `delivered`)
    9–10     stop         `sent`, `delivered`; then an inbound "STOP" from the recipient
    11–29    read         `sent`, `delivered`, `read`
    30–99    deliver      `sent`, `delivered`

360dialog (one Meta-format webhook per status):
    0–2      no_whatsapp  200 + wamid; `failed` 131026 (undeliverable)
    3–5      window       a non-template message: 200, then `failed` 131047 (re-engagement);
                          a template is delivered and read
    6–7      stop         `sent`, `delivered`, `read`; then an inbound reply: the "unsubscribe"
                          button when the message had one with that id, else text "СТОП"
    8–29     read         `sent`, `delivered`, `read`
    30–99    deliver      `sent`, `delivered`

GREEN-API (outgoingMessageStatus webhooks; the instance's `yellow_card_recipients` override all):
    0–2      no_account   200 + idMessage; status `noAccount`
    3–4      failed       `sent`, then `failed` with a description
    5–6      stop         `sent`, `delivered`, `read`; then incomingMessageReceived "СТОП"
    7–29     read         `sent`, `delivered`, `read`
    30–99    deliver      `sent`, `delivered`
    (config) yellow_card  `yellowCard`: WhatsApp restricted the sending number

SMS ("smsc", "smsru": one table, phone digits only, so a number fares alike at both):
    bucket   outcome        SMSC                                     SMS.ru
    0–1      stoplist       accepted; status 23, err 250 (forbidden  per-number 209 at send ("in your
                            by the account's settings)               stop list"); no callback
    2–3      no_route       send.php error 8 (cannot be delivered)   per-number 207 at send; no callback
    4–6      undeliverable  accepted; status 20, err 1 (subscriber   accepted; status 108 (rejected)
                            does not exist)
    7–9      expired        accepted; status 3 (expired), err 6      accepted; status 104 (expired)
                            (subscriber offline)
    10–99    deliver        accepted; status 1 (delivered)           accepted; status 103 (delivered)
An SMSC HLR lookup (hlr=1) reads the same table: deliver → status 1 (live number); expired → 20 err 6
(offline, exists); undeliverable → 20 err 1; stoplist → 23 err 250; no_route → send error 8.

VK (provider "vk", recipient = peer_id as a string):
    bucket   outcome    what the sandbox does
    0–2      blocked    messages.send answers error 901 (no permission to message this user); no callback
    3–4      deny       accepted; then `message_deny` (the user revokes the permission)
    5–6      stop       accepted; then `message_new` from the user with the text "Стоп"
    7–24     click      accepted; then `message_event` pressing the first callback button (none without one)
    25–99    deliver    accepted; no callback (the Callback API reports no deliveries)
"""

from __future__ import annotations

import hashlib

TELEGRAM = "telegram"
MAILGUN = "mailgun"
SENDGRID = "sendgrid"  # e-mail too: the same table and local-part overrides as Mailgun

BOUNCE, COMPLAIN, CLICK, DELIVER, BLOCKED = "bounce", "complain", "click", "deliver", "blocked"

_EMAIL_OVERRIDES = (BOUNCE, COMPLAIN, CLICK, DELIVER)
_EMAIL_TABLE = ((4, BOUNCE), (6, COMPLAIN), (30, CLICK), (100, DELIVER))
_TELEGRAM_TABLE = ((3, BLOCKED), (25, CLICK), (100, DELIVER))

TWILIO, D360, GREENAPI = "twilio", "d360", "greenapi"
OPTED_OUT, UNDELIVERED, WINDOW, STOP, READ = "opted_out", "undelivered", "window", "stop", "read"
NO_WHATSAPP, NO_ACCOUNT, FAILED, YELLOW_CARD = "no_whatsapp", "no_account", "failed", "yellow_card"
_PHONE_TABLES = {
    TWILIO: ((3, OPTED_OUT), (6, UNDELIVERED), (9, WINDOW), (11, STOP), (30, READ), (100, DELIVER)),
    D360: ((3, NO_WHATSAPP), (6, WINDOW), (8, STOP), (30, READ), (100, DELIVER)),
    GREENAPI: ((3, NO_ACCOUNT), (5, FAILED), (7, STOP), (30, READ), (100, DELIVER)),
}
SMSC, SMSRU, VK = "smsc", "smsru", "vk"
STOPLIST, NO_ROUTE, UNDELIVERABLE, EXPIRED, DENY = "stoplist", "no_route", "undeliverable", "expired", "deny"
_SMS_TABLE = ((2, STOPLIST), (4, NO_ROUTE), (7, UNDELIVERABLE), (10, EXPIRED), (100, DELIVER))
_PHONE_TABLES |= {SMSC: _SMS_TABLE, SMSRU: _SMS_TABLE}
_VK_TABLE = ((3, BLOCKED), (5, DENY), (7, STOP), (25, CLICK), (100, DELIVER))


def phone_digits(recipient: str) -> str:
    """The digits of a phone address: "whatsapp:+7 916 123-45-67" and "79161234567@c.us" → "79161234567"."""
    return "".join(ch for ch in recipient.partition("@")[0] if ch.isdigit())


def bucket(recipient: str) -> int:
    """0–99, from the first 32 bits of the recipient's SHA-256 (the address exactly as sent)."""
    return int(hashlib.sha256(recipient.encode()).hexdigest()[:8], 16) % 100


def outcome_for(provider: str, recipient: str) -> str:
    """The outcome of a send to `recipient` through `provider` ("telegram", "mailgun", "twilio", "d360", "greenapi")."""
    if provider in (MAILGUN, SENDGRID):
        local_part = recipient.split("@", 1)[0].lower()
        forced = next((name for name in _EMAIL_OVERRIDES if local_part.startswith(name)), None)
        return forced or _lookup(_EMAIL_TABLE, bucket(recipient))
    if provider == TELEGRAM:
        return _lookup(_TELEGRAM_TABLE, bucket(recipient))
    if provider == VK:
        return _lookup(_VK_TABLE, bucket(recipient))
    if provider in _PHONE_TABLES:
        return _lookup(_PHONE_TABLES[provider], bucket(phone_digits(recipient)))
    raise ValueError(f"unknown provider {provider!r}")


def _lookup(table: tuple[tuple[int, str], ...], value: int) -> str:
    return next(name for upper, name in table if value < upper)

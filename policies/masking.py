"""Masked forms of personal data for everything a person reads: logs, run metadata, error
reports, audit parameters.

Enough is kept for an operator to recognise a record they already know (the country and the
operator's code of a phone, the first letter and the domain of an e-mail, a name's initial), and
too little to contact anyone or to join the record with another data set. Pure functions over
text: whoever prints personal data calls ``mask_value`` with the field's name.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"\d")
MASK = "***"

# Fields that hold personal data directly, by the names the store, the imports and the send path use.
PHONE_FIELDS = frozenset({"phone", "whatsapp", "sms", "phone_ext"})
EMAIL_FIELDS = frozenset({"email"})
NAME_FIELDS = frozenset({"first_name", "last_name", "name"})
ID_FIELDS = frozenset({"telegram_chat_id", "vk_user_id", "telegram", "vk", "chat_id", "user_id", "address", "ip", "user_agent"})


def mask_phone(value: str) -> str:
    """``+79161234567`` → ``+7 916 ***-**-67``: country and operator code, last two digits.

    Works on any spelling (``8 (916) 123-45-67`` keeps its own first digit); fewer than seven
    digits say too little to be worth keeping, so nothing is kept.
    """
    digits = "".join(_DIGITS.findall(value))
    if len(digits) < 7:
        return MASK
    country = digits[:-10] if len(digits) > 10 else ""
    national = digits[len(country):]
    prefix = f"+{country} " if value.strip().startswith("+") and country else (f"{country} " if country else "")
    return f"{prefix}{national[:3]} ***-**-{digits[-2:]}"


def mask_email(value: str) -> str:
    """``ivan.petrov@mail.ru`` → ``i***@mail.ru``: the domain tells an operator which provider."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local:
        return MASK
    return f"{local[0]}{MASK}@{domain}"


def mask_name(value: str) -> str:
    """``Иван`` → ``И***``."""
    text = value.strip()
    return f"{text[0]}{MASK}" if text else ""


def mask_id(value: str) -> str:
    """A chat or user id, an IP, a user agent: only its last two characters."""
    text = str(value).strip()
    return f"{MASK}{text[-2:]}" if len(text) > 4 else MASK


def mask_value(field: str, value: object) -> object:
    """``value`` as it may be shown, given the name of the field that holds it.

    Fields that are not personal data come back unchanged; ``None`` and empty text stay as they are.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return value
    text = str(value)
    if field in PHONE_FIELDS:
        return mask_phone(text)
    if field in EMAIL_FIELDS:
        return mask_email(text)
    if field in NAME_FIELDS:
        return mask_name(text)
    if field in ID_FIELDS:
        return mask_id(text)
    return value

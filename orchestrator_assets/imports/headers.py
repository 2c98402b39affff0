"""Header names as people write them, mapped to our column names.

Real exports name their columns in the language of whoever set up the CRM or the spreadsheet:
``Телефон``, ``Моб. телефон``, ``E-mail``, ``Эл. почта``. Matching is on a *key* that ignores
case, spaces, punctuation and ``ё``/``е``, so ``Эл.почта``, ``эл почта`` and ``ЭЛ. ПОЧТА`` are one
name. An alias is listed only when it cannot mean anything else: ``Name`` (a full name? a first
name?) is deliberately absent, it is reported as an unknown column instead of being guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from orchestrator_assets.imports.validation import CSV_COLUMNS, OPTIONAL_COLUMNS

_NOT_A_LETTER = re.compile(r"[\W_]+")

ALIASES: dict[str, tuple[str, ...]] = {
    "external_id": ("ID", "Client ID", "Customer ID", "CRM ID", "ИД", "ID клиента", "Код клиента", "Код"),
    "first_name": ("First name", "Given name", "Имя"),
    "last_name": ("Last name", "Surname", "Family name", "Фамилия"),
    "email": ("Email", "E-mail", "Mail", "Email address", "Эл. почта", "Электронная почта", "Почта", "Емейл"),
    "phone": (
        "Phone",
        "Mobile",
        "Mobile phone",
        "Phone number",
        "Телефон",
        "Тел.",
        "Моб. телефон",
        "Мобильный телефон",
        "Мобильный",
        "Сотовый",
        "Номер телефона",
    ),
    "telegram_chat_id": ("Telegram", "Telegram ID", "Telegram chat ID", "Телеграм", "Телеграм ID"),
    "vk_user_id": ("VK", "VK ID", "VK user ID", "ВКонтакте", "ВК"),
    "city": ("City", "Town", "Город"),
    "language": ("Language", "Lang", "Язык"),
    "consent_email": ("Согласие email", "Согласие e-mail", "Согласие на email"),
    "consent_telegram": ("Согласие telegram", "Согласие телеграм"),
    "consent_sms": ("Согласие sms", "Согласие смс"),
    "consent_vk": ("Согласие vk", "Согласие вк"),
    "consent_whatsapp": ("Согласие whatsapp",),
    "consent_processing": ("Согласие на обработку", "Согласие на обработку ПД", "Согласие на обработку персональных данных"),
    "consent_source": ("Consent source", "Источник согласия"),
    "consent_at": ("Consent date", "Consent time", "Дата согласия"),
    "consent_text_version": ("Версия текста согласия",),
}
# Every column of ours, each always recognised under its own name.
OUR_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, *OPTIONAL_COLUMNS)


def header_key(name: str) -> str:
    """What two spellings of one header have in common: lower case, ``ё`` → ``е``, letters and
    digits only."""
    return _NOT_A_LETTER.sub("", name.casefold().replace("ё", "е"))


def alias_index(extra: dict[str, Iterable[str]] | None = None) -> dict[str, str]:
    """Header key → column name: our columns under their own names and their aliases, plus
    ``extra`` (a tenant's custom fields: name → its aliases). Our own columns win a clash."""
    index: dict[str, str] = {}
    ours = ((column, ALIASES.get(column, ())) for column in OUR_COLUMNS)
    for column, aliases in (*ours, *(extra or {}).items()):
        for alias in (column, *aliases):
            index.setdefault(header_key(alias), column)
    return index

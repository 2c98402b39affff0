"""Masked personal data and the audit trail's writer, as operators will read them."""

from __future__ import annotations

import json

import sqlalchemy as sa

from policies.masking import mask_email, mask_name, mask_phone, mask_value
from resources.audit import record_audit
from resources.opstore import OperationalStore
from resources.opstore_schema import audit_log


def test_a_masked_phone_keeps_country_operator_and_the_last_two_digits_only():
    assert mask_phone("+79161234567") == "+7 916 ***-**-67"
    assert mask_phone("8 (916) 123-45-67") == "8 916 ***-**-67"
    assert "1234" not in mask_phone("+7 916 123-45-67")
    assert mask_phone("12-34") == "***"


def test_masked_emails_names_and_ids_hide_what_identifies():
    assert mask_email("Ivan.Petrov@mail.ru") == "I***@mail.ru"
    assert mask_email("not an address") == "***"
    assert mask_name("  Иван ") == "И***"
    assert mask_value("telegram_chat_id", 105791818) == "***18"
    assert mask_value("city", "Москва") == "Москва"  # not personal on its own
    assert mask_value("phone", None) is None and mask_value("email", "") == ""


def test_an_audit_row_commits_with_the_change_it_describes(algor_home):
    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    with engine.begin() as conn:
        record_audit(conn, tenant="demo", actor="ops@example.ru", action="import.rollback", params={"import_id": 7}, run_id="r1")
    try:
        with engine.begin() as conn:
            record_audit(conn, tenant="demo", actor="ops@example.ru", action="contact.erase", params={"contact_id": 3})
            raise RuntimeError("the erasure failed")
    except RuntimeError:
        pass
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.action, audit_log.c.params, audit_log.c.run_id)).all()
    assert [(r.action, json.loads(r.params), r.run_id) for r in rows] == [("import.rollback", {"import_id": 7}, "r1")]

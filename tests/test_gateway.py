"""The webhook gateway over real HTTP: bad input gets a clear 4xx, the store being down a 503."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from gateway.app import create_app
from gateway.receivers import RECEIVERS, MiB
from pg import create_database, drop_database
from policies.loader import load_tenants
from resources.channels import d360, sendgrid, smsc, telegram
from resources.channels.base import CLOCK_SKEW_S
from resources.channels.mailgun import SIGNATURE_MAX_AGE_S, sign
from resources.links import _keys, sign_unsubscribe
from resources.opstore import engine_for
from resources.event_keys import stored_event_key
from resources.inbox_payloads import open_payload
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox.server import run_uvicorn_in_thread
from test_gateway_providers import TENANT as EVERY


def inbox_rows() -> list:
    with engine_for(get_settings().database_url).connect() as conn:
        return conn.execute(sa.select(webhook_inbox).order_by(webhook_inbox.c.id)).all()


def payload(row) -> dict:
    """An inbox row's payload, opened (the inbox keeps it sealed: it names people)."""
    return open_payload(row.tenant, row.provider, row.event_key, row.payload)


def mailgun_payload(event_id: str, key: str | None = None, age_s: int = 0) -> dict:
    key = key or get_settings().secret(load_tenants().tenants["demo"].accounts.mailgun.signing_key_env)
    timestamp, token = str(int(time.time()) - age_s), f"token-{event_id}-{age_s}"
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": sign(key, timestamp, token)},
        "event-data": {"id": event_id, "event": "delivered", "timestamp": time.time(), "recipient": "a@example.ru"},
    }


def test_bad_requests_get_clear_4xx_and_never_reach_the_inbox(gateway):
    hook = f"{gateway}/hooks/demo/mailgun"
    assert httpx.post(f"{gateway}/hooks/nobody/mailgun", json=mailgun_payload("e1")).status_code == 404
    assert httpx.post(hook, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(hook, json=[1, 2]).status_code == 400
    assert httpx.post(hook, content=b"x" * 1_100_000).status_code == 413
    assert httpx.post(hook, json=mailgun_payload("e2", age_s=SIGNATURE_MAX_AGE_S + 60)).status_code == 406  # stale: no retry can help
    assert httpx.post(hook, json=mailgun_payload("e3", key="wrong")).status_code == 403  # retried: our key may be the wrong one
    assert inbox_rows() == []


def test_replayed_signature_for_another_event_is_refused(gateway):
    hook = f"{gateway}/hooks/demo/mailgun"
    genuine = mailgun_payload("e1")
    assert httpx.post(hook, json=genuine).status_code == 200
    assert httpx.post(hook, json=genuine).status_code == 200  # provider retry of the same event
    replay = {**genuine, "event-data": {**genuine["event-data"], "id": "e-forged"}}
    assert httpx.post(hook, json=replay).status_code == 406
    assert [row.event_key for row in inbox_rows()] == [stored_event_key("demo", "mailgun", "e1")]


def test_unsubscribe_get_changes_nothing_post_records_once_tampered_is_404(gateway):
    token = sign_unsubscribe("demo", 42, "black_friday_2026")
    page = httpx.get(f"{gateway}/unsubscribe/demo/{token}")
    assert page.status_code == 200 and "<form" in page.text
    assert inbox_rows() == []
    assert httpx.get(f"{gateway}/unsubscribe/demo/{token[:-2]}xx").status_code == 404
    assert httpx.post(f"{gateway}/unsubscribe/acme/{token}").status_code == 404  # another tenant's link
    for _ in range(2):
        response = httpx.post(f"{gateway}/unsubscribe/demo/{token}", content=b"List-Unsubscribe=One-Click")
        assert response.status_code == 200
    (row,) = inbox_rows()
    assert (row.tenant, row.provider, row.event_key) == ("demo", "unsubscribe", stored_event_key("demo", "unsubscribe", "42:black_friday_2026"))
    assert payload(row)["method"] == "one-click"


def test_a_delayed_mailgun_retry_is_stored_once_and_only_a_post_past_the_window_is_refused(gateway):
    """Mailgun retries for 8 hours with the first attempt's signature: a retry two hours on is the
    event, not an attack. Replays are stopped by the token memory and the inbox's key instead."""
    hook = f"{gateway}/hooks/demo/mailgun"
    retry = mailgun_payload("e-late", age_s=2 * 3600)
    assert httpx.post(hook, json=retry).status_code == 200
    assert httpx.post(hook, json=retry).status_code == 200  # the next retry (or a replay): acknowledged, not stored again
    forged = {**retry, "event-data": {**retry["event-data"], "id": "e-forged"}}
    assert httpx.post(hook, json=forged).status_code == 406  # its token with another event
    with run_uvicorn_in_thread(create_app()) as restarted:  # a worker without the token memory
        assert httpx.post(f"{restarted}/hooks/demo/mailgun", json=retry).status_code == 200
    too_old = httpx.post(hook, json=mailgun_payload("e-old", age_s=SIGNATURE_MAX_AGE_S + 60))
    assert too_old.status_code == 406 and too_old.json()["detail"] == "signature older than 12 hours"  # Mailgun stops
    ahead = httpx.post(hook, json=mailgun_payload("e-ahead", age_s=-(CLOCK_SKEW_S + 60)))
    assert ahead.status_code == 403  # Mailgun retries; by then the clocks agree
    assert [row.event_key for row in inbox_rows()] == [stored_event_key("demo", "mailgun", "e-late")]


def test_store_down_means_503_so_the_provider_retries(algor_home):
    url = create_database()
    app = create_app(database_url=url)
    drop_database(url)  # the store disappears while the gateway runs
    engine_for(url).dispose()
    with run_uvicorn_in_thread(app) as gateway:
        assert httpx.post(f"{gateway}/hooks/demo/mailgun", json=mailgun_payload("e1")).status_code == 503
        assert httpx.get(f"{gateway}/ready").status_code == 503
        assert httpx.get(f"{gateway}/health").status_code == 200


def secret(env_name: str) -> str:
    return get_settings().secret(env_name)


def telegram_post(gateway: str, content: bytes) -> httpx.Response:
    """A post with the right secret token, so the body itself decides."""
    headers = {telegram.SECRET_HEADER: secret(EVERY.accounts.telegram.webhook_secret_env), "content-type": "application/json"}
    return httpx.post(f"{gateway}/hooks/every/telegram", content=content, headers=headers)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe\xfd",  # not UTF-8 (nor UTF-16: odd length)
        b'{"update_id": 1, "x": ' + b"9" * 5000 + b"}",  # past Python's int digit limit
        b"[" * 100_000,  # deeper than the parser's recursion limit
        b'{"update_id": 1, "x": NaN}',
        b'{"update_id": 1, "x": -Infinity}',
        b'{"update_id": 1, "x": "\\ud800"}',  # an unpaired surrogate: cannot be stored as UTF-8
    ],
    ids=["syntax", "not-utf8", "digits", "nesting", "nan", "infinity", "surrogate"],
)
def test_malformed_json_is_a_clear_400_never_a_500(gateway, body):
    response = telegram_post(gateway, body)
    assert response.status_code == 400 and response.json()["detail"].startswith("body is not JSON"), response.text
    assert inbox_rows() == []


def test_a_pair_of_surrogate_escapes_is_one_character_and_stored(gateway):
    assert telegram_post(gateway, b'{"update_id": 7, "message": {"text": "\\ud83d\\ude00"}}').status_code == 200
    (row,) = inbox_rows()
    assert payload(row)["message"]["text"] == "\U0001f600"
    assert "\U0001f600".encode() not in row.payload.encode() and row.payload.startswith("sealed:")


@pytest.mark.parametrize(
    "update",
    [{"update_id": True}, {"update_id": "1"}, {"message": {}}],
    ids=["bool", "string", "missing"],
)
def test_telegram_update_without_an_integer_id_is_refused(gateway, update):
    response = telegram_post(gateway, json.dumps(update).encode())
    assert response.status_code == 400 and "update_id" in response.json()["detail"]


def vk_post(gateway: str, event_id: object) -> httpx.Response:
    vk = EVERY.accounts.vk
    event = {"type": "message_new", "event_id": event_id, "group_id": vk.group_id, "secret": secret(vk.callback_secret_env), "object": {}}
    return httpx.post(f"{gateway}/hooks/every/vk", json=event)


@pytest.mark.parametrize("event_id", ["e" * 257, "a\x00b", "a\nb"], ids=["too-long", "nul", "newline"])
def test_event_ids_the_inbox_cannot_hold_are_refused(gateway, event_id):
    """No provider's event id is longer than 256 characters or holds control characters: such a post is refused."""
    response = vk_post(gateway, event_id)
    assert response.status_code == 400 and "event id" in response.json()["detail"]
    assert vk_post(gateway, "e" * 256).status_code == 200
    assert [row.event_key for row in inbox_rows()] == [stored_event_key("every", "vk", "e" * 256)]


def smsc_form(status: str = "1", **extra: str) -> dict[str, str]:
    form = {"id": "7", "phone": "79160000001", "status": status, **extra}
    return {**form, "md5": smsc.sign(form, secret(EVERY.accounts.smsc.password_env))}


def test_wrong_content_types_are_refused_clearly(gateway):
    form_hook, json_hook = f"{gateway}/hooks/every/smsc", f"{gateway}/hooks/every/telegram"
    assert httpx.post(form_hook, json=smsc_form()).status_code == 415  # JSON where a form belongs
    assert httpx.post(form_hook, content=b"id=1", headers={"content-type": "multipart/form-data"}).status_code == 415
    for charset in ("no-such-charset", "base64"):  # unknown, and a codec that is no text encoding
        response = httpx.post(form_hook, data=smsc_form(), headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}"})
        assert response.status_code == 415 and "charset" in response.json()["detail"]
    headers = {telegram.SECRET_HEADER: secret(EVERY.accounts.telegram.webhook_secret_env)}
    assert httpx.post(json_hook, data={"update_id": "1"}, headers=headers).status_code == 400  # a form where JSON belongs
    assert inbox_rows() == []


def test_a_form_in_its_declared_charset_is_read_in_it(gateway):
    """Media type names are case-insensitive, and a Russian provider may well post in windows-1251."""
    form = smsc_form(status="", mes="стоп")
    body = "&".join(f"{name}={value}" for name, value in form.items()).encode("cp1251")
    headers = {"content-type": "Application/X-WWW-Form-URLEncoded; charset=Windows-1251"}
    assert httpx.post(f"{gateway}/hooks/every/smsc", content=body, headers=headers).status_code == 200
    (row,) = inbox_rows()
    assert payload(row)["mes"] == "стоп"


def status_line_before_the_body_ends(gateway: str, headers: str, body: bytes) -> bytes:
    """Send a request whose body never completes; the status line the gateway answers with anyway
    (a gateway that reads the whole body first would wait here until the socket times out)."""
    url = urlsplit(gateway)
    head = f"POST /hooks/every/telegram HTTP/1.1\r\nHost: {url.netloc}\r\n{telegram.SECRET_HEADER}: {secret(EVERY.accounts.telegram.webhook_secret_env)}\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(f"{head}{headers}\r\n".encode() + body)
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_an_oversized_body_is_refused_without_waiting_for_all_of_it(gateway):
    declared = status_line_before_the_body_ends(gateway, "Content-Length: 50000000\r\n", b"x" * 1000)
    chunk = b"%x\r\n%s\r\n" % (100_000, b"x" * 100_000)
    chunked = status_line_before_the_body_ends(gateway, "Transfer-Encoding: chunked\r\n", chunk * 11)  # 1.1 MB, no last chunk
    assert b" 413 " in declared and b" 413 " in chunked, (declared, chunked)
    assert inbox_rows() == []


def d360_status_batch(batch: int, min_bytes: int) -> bytes:
    """A Meta-format webhook as 360dialog forwards it: delivery statuses of many messages in one
    post, at least ``min_bytes`` long (Meta batches statuses; its payloads go up to 3 MB)."""
    status = {
        "status": "delivered",
        "timestamp": "1717000003",
        "recipient_id": "79161234567",
        "conversation": {"id": "0" * 32, "origin": {"type": "marketing"}},
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "marketing"},
    }
    count = min_bytes // len(json.dumps(status)) + 1
    statuses = [{"id": f"wamid.HBgL{batch:04d}{n:08d}", **status} for n in range(count)]
    value = {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "74950000000", "phone_number_id": "1"}, "statuses": statuses}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}).encode()
    assert len(body) >= min_bytes
    return body


def test_a_genuine_360dialog_batch_past_a_megabyte_is_stored_and_one_past_its_limit_is_413(gateway):
    """Meta documents WhatsApp webhook payloads of up to 3 MB; a genuine one refused as too large
    would be retried by the provider until it gives up, and then lost."""
    hook = f"{gateway}/hooks/every/d360"
    headers = {d360.WEBHOOK_SECRET_HEADER: secret(EVERY.accounts.d360.webhook_secret_env), "content-type": "application/json"}
    batches = [d360_status_batch(1, 1_500_000), d360_status_batch(2, 3 * MiB)]
    for body in batches:
        response = httpx.post(hook, content=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
    assert [payload(row) for row in inbox_rows()] == [json.loads(body) for body in batches]
    too_large = d360_status_batch(3, RECEIVERS["d360"].max_body_bytes + 1)
    response = httpx.post(hook, content=too_large, headers=headers, timeout=60)
    assert response.status_code == 413 and "body too large" in response.json()["detail"]
    assert len(inbox_rows()) == len(batches)
    spec = httpx.get(f"{gateway}/openapi.json").json()
    assert f"{RECEIVERS['d360'].max_body_bytes:,} bytes" in spec["paths"]["/hooks/{tenant_id}/d360"]["post"]["responses"]["413"]["description"]


def test_unknown_providers_and_paths_are_404_with_the_reason(gateway):
    for path in ("/hooks/demo/nosuch", "/hooks/demo/telegram/extra", "/hooks/demo/nosuch/a/b"):
        response = httpx.post(gateway + path, json={})
        assert (response.status_code, response.json()["detail"]) == (404, "unknown provider"), path
    assert httpx.post(f"{gateway}/hooks/demo/vk", json={}).json()["detail"] == "no vk account for this tenant"


@pytest.mark.parametrize("timestamp", ["²", "9" * 400, "-5", "17e8"], ids=["superscript", "huge", "negative", "exponent"])
def test_signature_timestamps_that_are_no_clock_time_are_refused(gateway, timestamp):
    """``"²".isdigit()`` is True but ``int("²")`` fails, and 400 digits overflow a float: both were 500s."""
    mailgun = {"signature": {"timestamp": timestamp, "token": "t", "signature": "s"}, "event-data": {"id": "e1", "event": "delivered"}}
    assert httpx.post(f"{gateway}/hooks/every/mailgun", json=mailgun).status_code == 403
    headers = {sendgrid.SIGNATURE_HEADER: "MEUCIQ==", sendgrid.TIMESTAMP_HEADER: timestamp.encode("latin-1")}
    assert httpx.post(f"{gateway}/hooks/every/sendgrid", json=[{"event": "delivered"}], headers=headers).status_code == 403
    assert inbox_rows() == []


def test_a_tampered_link_with_a_non_ascii_signature_is_404(gateway):
    """``hmac.compare_digest`` raises on non-ASCII str: the MAC from the URL is compared as bytes."""
    token = f"{next(iter(_keys()))}.eyJ9.%C3%A9"  # the current key id, so the MAC is really compared
    assert httpx.get(f"{gateway}/c/demo/{token}").status_code == 404
    assert httpx.get(f"{gateway}/unsubscribe/demo/{token}").status_code == 404


def signed_mailgun(event_data: object) -> dict:
    key, timestamp, token = secret(EVERY.accounts.mailgun.signing_key_env), str(int(time.time())), f"token-{time.monotonic_ns()}"
    return {"signature": {"timestamp": timestamp, "token": token, "signature": sign(key, timestamp, token)}, "event-data": event_data}


def test_authentic_posts_of_an_unexpected_shape_are_400_not_500(gateway):
    """Past the signature, a list where an object belongs used to raise AttributeError."""
    assert httpx.post(f"{gateway}/hooks/every/mailgun", json=signed_mailgun([{"id": "e1"}])).status_code == 400
    d360_headers = {d360.WEBHOOK_SECRET_HEADER: secret(EVERY.accounts.d360.webhook_secret_env)}
    for entry in ("x", {"changes": "x"}, [{"changes": [{"value": []}]}], ["x"]):
        response = httpx.post(f"{gateway}/hooks/every/d360", json={"entry": entry}, headers=d360_headers)
        assert response.status_code == 400 and "without statuses or messages" in response.json()["detail"], entry
    green = {"Authorization": f"Bearer {secret(EVERY.accounts.greenapi.webhook_token_env)}"}
    state = {"typeWebhook": "stateInstanceChanged", "timestamp": 1717000000, "instanceData": ["not", "an", "object"]}
    assert httpx.post(f"{gateway}/hooks/every/greenapi", json=state, headers=green).status_code == 200
    assert [row.event_key for row in inbox_rows()] == [stored_event_key("every", "greenapi", "stateInstanceChanged:None:1717000000")]


def test_an_event_for_a_message_we_do_not_know_is_accepted_for_processing(gateway):
    """The gateway cannot tell "unknown" from "not finalised yet": it stores the event, and the
    processing run retries it, then dead-letters it (tests/test_inbox_retries.py)."""
    event = {"id": "ev-unknown", "event": "delivered", "timestamp": time.time(), "message": {"headers": {"message-id": "nobody@mg"}}}
    assert httpx.post(f"{gateway}/hooks/every/mailgun", json=signed_mailgun(event)).status_code == 200
    assert [(row.provider, row.event_key) for row in inbox_rows()] == [("mailgun", stored_event_key("every", "mailgun", "ev-unknown"))]

"""Schemathesis against the gateway's own OpenAPI spec, over real HTTP (uvicorn on loopback).

Unsigned: schemathesis runs as its CLI would (coverage and fuzzing phases; positive and negative
data; missing headers, odd content types and methods). Every answer is a documented status with a
documented content type, never a 5xx, and nothing it sends reaches the inbox.

Signed: the same generated bodies, signed with the embedded secrets each provider's way, get past
verification, so the parsing behind it is fuzzed too: each post is stored or refused with a
documented 4xx, and every stored row goes through delivery processing without crashing it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.engine import Status, events
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from gateway.openapi import HOOKS
from orchestrator_assets.deliveries.processing import process_rows
from resources.channels import d360, sendgrid, smsc, telegram
from resources.embedded_keys import sendgrid_sandbox_signing_key
from resources.opstore import engine_for
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox import mailgun as sandbox_mailgun
from sandbox import twilio as sandbox_twilio
from test_gateway import EVERY as TENANT
from test_gateway import inbox_rows, secret

TENANT_ID = "every"  # has an account at every provider, so every receiver is reached
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 25  # per operation and phase (unsigned run: about 800 requests in 10 s)
SIGNED_EXAMPLES = 40  # per provider, positive and negative mixed; the whole module takes about 30 s
SEED = 20261124
MAX_ITEMS = 3


def narrow(node: object) -> None:
    """Two test-only narrowings of the served spec, in place.

    ``tenant_id`` becomes the test tenant: the public spec cannot name tenants (it is the same for
    every deployment, and tenant ids are not for strangers), and without this nearly every request
    would stop at "unknown tenant"; negative generation still sends other ids. Arrays get at most
    MAX_ITEMS items: unbounded, a 360dialog body averages 12 kB and takes 20x longer to generate,
    while large bodies are the body-limit tests' business.
    """
    if isinstance(node, dict):
        if node.get("in") == "path" and node.get("name") == "tenant_id":
            node["schema"]["enum"] = [TENANT_ID]
        if node.get("type") == "array":
            node["maxItems"] = MAX_ITEMS
        for value in node.values():
            narrow(value)
    elif isinstance(node, list):
        for value in node:
            narrow(value)


def load_schema(url: str) -> schemathesis.BaseSchema:
    """The spec the gateway serves (narrowed, see ``narrow``), set up to run deterministically."""
    spec = httpx.get(f"{url}/openapi.json").raise_for_status().json()
    narrow(spec)
    config = {
        "base-url": url,
        "seed": SEED,
        "generation": {"mode": "all", "deterministic": True, "max-examples": EXAMPLES},
        "checks": {"enabled": False} | {check.__name__: {"enabled": True} for check in CHECKS},
        "phases": {"stateful": {"enabled": False}},  # no links between operations to follow
    }
    return schemathesis.openapi.from_dict(spec, config=schemathesis.Config.from_dict(config))


def run_schemathesis(schema: schemathesis.BaseSchema) -> tuple[int, list[str]]:
    """Run every phase over every operation; (requests sent, one line per distinct failure)."""
    sent, failures = 0, {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            sent += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in (check for check in checks if check.status == Status.FAILURE):
                    failure = check.failure_info
                    failures.setdefault(f"{event.recorder.label} {check.name}: {failure.failure.title}", failure.code_sample)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures[f"schemathesis error: {event}"] = ""
    return sent, [f"{title}\n{sample}" for title, sample in failures.items()]


def test_unsigned_requests_get_documented_answers_and_never_reach_the_inbox(gateway):
    sent, failures = run_schemathesis(load_schema(gateway))
    assert failures == []
    assert sent > 500, sent  # it really exercised the gateway (about 800 requests)
    assert inbox_rows() == []


# --- signed: the generated bodies, made authentic --------------------------------------------------


def encode(body: object, form: bool) -> bytes:
    """The bytes of a generated body (negative generation makes non-objects and raw bytes too)."""
    if isinstance(body, bytes):
        return body
    if form and isinstance(body, dict):
        return urlencode({name: value if isinstance(value, str) else json.dumps(value) for name, value in body.items()}).encode()
    return json.dumps(body, ensure_ascii=False).encode()


Signed = tuple[str, dict[str, str], bytes]  # (path, headers, body)


def sign_mailgun(path: str, body: object) -> Signed:
    if isinstance(body, dict):
        body = {**body, "signature": sandbox_mailgun.signature(secret(TENANT.accounts.mailgun.signing_key_env))}
    return path, {}, encode(body, form=False)


def sign_sendgrid(path: str, body: object) -> Signed:
    raw, timestamp = encode(body, form=False), str(int(time.time()))
    key = serialization.load_pem_private_key(sendgrid_sandbox_signing_key(TENANT.accounts.sendgrid.webhook_public_key_env).encode(), None)
    signature = base64.b64encode(key.sign(timestamp.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()
    return path, {sendgrid.SIGNATURE_HEADER: signature, sendgrid.TIMESTAMP_HEADER: timestamp}, raw


def sign_vk(path: str, body: object) -> Signed:
    if isinstance(body, dict):
        body = {**body, "secret": secret(TENANT.accounts.vk.callback_secret_env), "group_id": TENANT.accounts.vk.group_id}
    return path, {}, encode(body, form=False)


def sign_smsc(path: str, body: object) -> Signed:
    raw = encode(body, form=True)
    fields = dict(parse_qsl(raw.decode(), keep_blank_values=True))
    return path, {}, raw + b"&" + urlencode({"md5": smsc.sign(fields, secret(TENANT.accounts.smsc.password_env))}).encode()


def sign_twilio(path: str, body: object) -> Signed:
    raw = encode(body, form=True)
    params = dict(parse_qsl(raw.decode(), keep_blank_values=True))
    url = get_settings().gateway_url + path
    return path, {"X-Twilio-Signature": sandbox_twilio.signature(secret(TENANT.accounts.twilio.auth_token_env), url, params)}, raw


def header_signer(name: str, value: Callable[[], str], form: bool = False) -> Callable[[str, object], Signed]:
    return lambda path, body: (path, {name: value()}, encode(body, form))


SIGNERS: dict[str, Callable[[str, object], Signed]] = {
    "telegram": header_signer(telegram.SECRET_HEADER, lambda: secret(TENANT.accounts.telegram.webhook_secret_env)),
    "mailgun": sign_mailgun,
    "sendgrid": sign_sendgrid,
    "vk": sign_vk,
    "smsc": sign_smsc,
    "smsru": lambda path, body: (
        path.rsplit("/", 1)[0] + "/" + secret(TENANT.accounts.smsru.callback_secret_env),
        {},
        encode(body, form=True),
    ),
    "twilio": sign_twilio,
    "d360": header_signer(d360.WEBHOOK_SECRET_HEADER, lambda: secret(TENANT.accounts.d360.webhook_secret_env)),
    "greenapi": header_signer("Authorization", lambda: f"Bearer {secret(TENANT.accounts.greenapi.webhook_token_env)}"),
}


def process_new_rows(seen: set[int]) -> None:
    """Apply the rows stored since the last call, as a delivery-processing run would: a payload it
    cannot read may be retried and dead-lettered, but nothing may escape as an exception."""
    engine = engine_for(get_settings().database_url)
    with engine.begin() as conn:
        rows = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.id.notin_(seen) if seen else sa.true())).all()
        process_rows(conn, TENANT_ID, rows, complaint_suppresses_all=True, now=dt.datetime.now(dt.UTC))
    seen.update(row.id for row in rows)


@pytest.mark.parametrize("provider", list(HOOKS))
def test_signed_generated_callbacks_are_stored_or_refused_and_never_crash_processing(gateway, provider):
    doc = HOOKS[provider]
    operation = load_schema(gateway)[f"/hooks/{{tenant_id}}/{provider}" + ("/{secret}" if doc.secret_path else "")]["POST"]
    media_type = next(iter(doc.request["requestBody"]["content"]))
    statuses, seen = set(), set()

    tenant = {"tenant_id": TENANT_ID}  # unknown tenants are the unsigned run's business
    cases = st.one_of(*(operation.as_strategy(mode, path_parameters=tenant) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))

    @given(case=cases)
    @settings(max_examples=SIGNED_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def post_signed(case):
        path, headers, raw = SIGNERS[provider](case.formatted_path, case.body)
        response = httpx.post(f"{gateway}{path}", content=raw, headers={"content-type": media_type, **headers})
        case.validate_response(response, checks=CHECKS)
        statuses.add(response.status_code)
        process_new_rows(seen)

    post_signed()
    # Signing works (so the fuzzing went past verification) and what was accepted was stored;
    # VK's confirmation handshake is answered, not stored, and may be all VK accepted.
    assert 200 in statuses, statuses
    assert inbox_rows() or provider == "vk"

"""The hash chain of the consent ledger: one rule, used by the writer, the verifier and the migration.

Each consent event stores ``prev_hash`` (the hash of the contact's previous event, ``GENESIS`` for
the first) and ``hash = sha256(prev_hash ‖ canonical JSON of the event's fields)``. Changing any
hashed field of a stored event, deleting or re-ordering one breaks the link to its successor, so the
verifier can name the first broken event. Bytes (sealed identity evidence) are hashed as base64, so
the chain still verifies after crypto-shredding made them unreadable.

Times are hashed as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``: SQLite hands them back without an offset
and PostgreSQL with one, and both must hash the same.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

GENESIS = "0" * 64
HASHED_FIELDS = (
    "tenant",
    "contact_id",
    "channel",
    "purpose",
    "action",
    "source_kind",
    "source_ref",
    "origin",
    "occurred_at",
    "recorded_at",
    "text_version",
    "valid_until",
    "withdrawal_channel",
    "evidence_identity",
    "detail",
)


def canonical_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        moment = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


_ENCODE = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode  # one encoder, not one per call


def canonical_json(event: Mapping[str, Any]) -> str:
    return _ENCODE({name: canonical_value(event.get(name)) for name in HASHED_FIELDS})


def event_hash(prev_hash: str, event: Mapping[str, Any]) -> str:
    return chain_hash(prev_hash, canonical_json(event))


def chain_hash(prev_hash: str, event_json: str) -> str:
    """The hash of an event whose canonical JSON is ``event_json``."""
    return hashlib.sha256(prev_hash.encode("ascii") + event_json.encode("utf-8")).hexdigest()


def json_text(value: Any) -> str:
    """The JSON ``canonical_json`` writes for one field's value."""
    return json.dumps(canonical_value(value), ensure_ascii=False)


class EventTemplate:
    """``canonical_json`` of events that differ only in the ``varying`` fields: the JSON of the
    ``fixed`` ones is written once, and each event costs one string format. A bulk import hashes
    millions of events that share their tenant, purpose, action, source kind, text and time of
    recording; the result is byte for byte what ``canonical_json`` gives (tests hold it to that).
    """

    def __init__(self, fixed: Mapping[str, Any], varying: Sequence[str]) -> None:
        unknown = (set(fixed) | set(varying)) - set(HASHED_FIELDS)
        if unknown or set(fixed) & set(varying):
            raise ValueError(f"fields must be hashed ones, each either fixed or varying: {sorted(unknown) or sorted(set(fixed) & set(varying))}")
        pieces, self.varying = [], tuple(name for name in sorted(HASHED_FIELDS) if name in varying)
        for name in sorted(HASHED_FIELDS):
            value = "{}" if name in varying else json_text(fixed.get(name)).replace("{", "{{").replace("}", "}}")
            pieces.append(f"{json.dumps(name)}:{value}")
        self._format = ("{{" + ",".join(pieces) + "}}").format

    def json(self, *texts: str) -> str:
        """The event's canonical JSON, given the ``json_text`` of each varying field in sorted name order."""
        return self._format(*texts)

"""Immutable template versions: the operational store remembers each version's content hash from
the first time it was seen, and refuses a version whose content has changed since.

A campaign pins ``{template, version}`` so that what went out can be told later from what goes out
now; that only holds if nobody edits version 2 in place. The library file cannot know its own past,
so the first sight (by the ``message_templates`` asset or by a campaign starting) is recorded here,
and every later sight compares hashes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from policies.template_library import Version
from resources.opstore_schema import template_versions
from resources.sql import upsert_insert


class TemplateVersionChanged(ValueError):
    """A recorded template version's content differs from the library's; one line per version."""


@dataclass(frozen=True)
class SeenVersion:
    template: str
    version: int
    content_hash: str
    first_seen_at: dt.datetime
    first_campaign: str


def recorded_versions(conn: sa.Connection, tenant: str) -> dict[tuple[str, int], SeenVersion]:
    query = sa.select(template_versions).where(template_versions.c.tenant == tenant)
    return {
        (row.template, row.version): SeenVersion(row.template, row.version, row.content_hash, _utc(row.first_seen_at), row.first_campaign)
        for row in conn.execute(query)
    }


def record_versions(
    conn: sa.Connection, tenant: str, versions: Iterable[tuple[str, Version]], now: dt.datetime, campaign: str, run_id: str
) -> dict[tuple[str, int], SeenVersion]:
    """Record the versions not seen before; raise ``TemplateVersionChanged`` (recording nothing)
    when a seen one's content differs. Returns the tenant's history, these versions included."""
    seen = recorded_versions(conn, tenant)
    versions = list(versions)
    changed = [(name, version) for name, version in versions if (name, version.version) in seen and seen[name, version.version].content_hash != version.content_hash]
    if changed:
        newest: dict[str, int] = {}
        for name, number in [*seen, *((n, v.version) for n, v in versions)]:
            newest[name] = max(newest.get(name, 0), number)
        raise TemplateVersionChanged("\n".join(_changed_message(seen[name, v.version], newest[name]) for name, v in changed))
    new = [(name, version) for name, version in versions if (name, version.version) not in seen]
    for name, version in new:
        values = {"tenant": tenant, "template": name, "version": version.version, "content_hash": version.content_hash,
                  "first_seen_at": now, "first_campaign": campaign, "first_run_id": run_id}  # fmt: skip
        conn.execute(upsert_insert(conn, template_versions).values(values).on_conflict_do_nothing())
    return recorded_versions(conn, tenant) if new else seen


def _changed_message(first: SeenVersion, newest: int) -> str:
    by = f" by campaign {first.first_campaign!r}" if first.first_campaign else ""
    return (
        f"template {first.template!r} version {first.version} changed since it was first used on "
        f"{first.first_seen_at:%Y-%m-%d %H:%M} UTC{by}; published versions are immutable: restore it and "
        f"publish the change as version {newest + 1}"
    )


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value  # SQLite drops the zone

"""Loading and cross-checking the policy files.

Every failure is a ``PolicyError`` whose lines read ``<file>: <key path>: <why>``, e.g.
``.../campaigns.yaml: campaigns[0].channels[1].subject: email needs a subject``, so an operator
can fix the file without reading a traceback. YAML duplicate keys are rejected: PyYAML would
otherwise keep the last one silently, and a second ``text:`` would replace the first unseen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from policies.campaigns import Campaign, CampaignsFile
from policies.consent_texts import ConsentTextsFile
from policies.policy import Policy
from policies.segments import RULE_TAGS, Rule, Segment, SegmentsFile, behaviours, rule_problems
from policies.template_library import LibraryTemplate, TemplatesFile, reference_problems
from policies.tenants import Tenant, TenantsFile

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "config"
TENANTS_FILE = "tenants.yaml"
SEGMENTS_FILE = "segments.yaml"
CAMPAIGNS_FILE = "campaigns.yaml"
POLICY_FILE = "policy.yaml"
CONSENT_TEXTS_FILE = "consent_texts.yaml"
TEMPLATES_FILE = "templates.yaml"  # optional: without it no campaign may use `message_template`

PathLike = str | os.PathLike[str]
RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)
Model = TypeVar("Model", bound=BaseModel)


class PolicyError(ValueError):
    """A policy file is unreadable, malformed or inconsistent; one line per problem."""

    def __init__(self, file: PathLike, problems: Sequence[tuple[str, str]]):
        self.file = Path(file)
        self.problems = tuple(problems)  # (key path or position, reason)
        super().__init__("\n".join(f"{self.file}: {where}: {why}" for where, why in self.problems))


@dataclass(frozen=True)
class PolicyBundle:
    """All policy files, validated and cross-checked; every tenant has an entry in each index."""

    tenants: dict[str, Tenant]
    segments: dict[str, dict[str, Segment]]  # tenant -> segment name -> segment
    campaigns: dict[str, dict[str, Campaign]]  # tenant -> campaign name -> campaign
    policy: Policy
    templates: dict[str, dict[str, LibraryTemplate]] = field(default_factory=dict)  # tenant -> name -> template


def load_tenants(path: PathLike | None = None) -> TenantsFile:
    return _load(TenantsFile, Path(path) if path else DEFAULT_CONFIG_DIR / TENANTS_FILE)


def load_segments(path: PathLike | None = None) -> SegmentsFile:
    return _load(SegmentsFile, Path(path) if path else DEFAULT_CONFIG_DIR / SEGMENTS_FILE)


def load_campaigns(path: PathLike | None = None) -> CampaignsFile:
    return _load(CampaignsFile, Path(path) if path else DEFAULT_CONFIG_DIR / CAMPAIGNS_FILE)


def load_policy(path: PathLike | None = None) -> Policy:
    return _load(Policy, Path(path) if path else DEFAULT_CONFIG_DIR / POLICY_FILE)


def load_consent_texts(path: PathLike | None = None) -> ConsentTextsFile:
    return _load(ConsentTextsFile, Path(path) if path else DEFAULT_CONFIG_DIR / CONSENT_TEXTS_FILE)


def load_templates(path: PathLike | None = None) -> TemplatesFile:
    """The template library; a missing file is an empty library (inline campaigns need none)."""
    path = Path(path) if path else DEFAULT_CONFIG_DIR / TEMPLATES_FILE
    return _load(TemplatesFile, path) if path.exists() else TemplatesFile()


def load_bundle(config_dir: PathLike | None = None) -> PolicyBundle:
    """Load the policy files from ``config_dir`` and check the references between them."""
    root = Path(config_dir) if config_dir else DEFAULT_CONFIG_DIR
    tenants = load_tenants(root / TENANTS_FILE).tenants
    segments_file = load_segments(root / SEGMENTS_FILE)
    campaigns_file = load_campaigns(root / CAMPAIGNS_FILE)
    policy = load_policy(root / POLICY_FILE)
    templates_file = load_templates(root / TEMPLATES_FILE)
    _raise_if(root / POLICY_FILE, _recipient_policy_problems(policy, tenants))

    _raise_if(root / SEGMENTS_FILE, _segment_problems(segments_file, tenants))
    segments = {t: {s.name: s for s in segments_file.segments.get(t, [])} for t in tenants}
    _raise_if(root / TEMPLATES_FILE, ((f"templates.{t}", f"tenant {t!r} is not defined in {TENANTS_FILE}") for t in templates_file.templates if t not in tenants))
    _raise_if(root / CAMPAIGNS_FILE, _campaign_problems(campaigns_file, tenants, segments, policy))
    _raise_if(root / CAMPAIGNS_FILE, reference_problems(campaigns_file, templates_file))
    campaigns: dict[str, dict[str, Campaign]] = {t: {} for t in tenants}
    for campaign in campaigns_file.campaigns:
        campaigns[campaign.tenant][campaign.name] = campaign
    templates = {t: templates_file.for_tenant(t) for t in tenants}
    return PolicyBundle(tenants=tenants, segments=segments, campaigns=campaigns, policy=policy, templates=templates)


def _segment_problems(segments_file: SegmentsFile, tenants: dict[str, Tenant]) -> Iterable[tuple[str, str]]:
    for tenant, items in segments_file.segments.items():
        if tenant not in tenants:
            yield f"segments.{tenant}", f"tenant {tenant!r} is not defined in {TENANTS_FILE}"
            continue
        for i, segment in enumerate(items):
            yield from rule_problems(segment.rule, tenants[tenant].custom_fields, f"segments.{tenant}[{i}].rule")


def parse_rule(text: str, tenant: Tenant) -> Rule:
    """A segment rule given as YAML or JSON text (a live count's draft), validated like one in
    ``segments.yaml``, custom fields against ``tenant``'s; errors read ``rule: <key path>: <why>``."""
    where = Path("rule")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise PolicyError(where, [(exc.where, exc.why)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(where, [("(text)", f"neither YAML nor JSON: {exc}")]) from None
    try:
        rule = RULE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise PolicyError(where, [(_key_path(e["loc"]), _reason(e)) for e in exc.errors()]) from None
    _raise_if(where, rule_problems(rule, tenant.custom_fields, ""))
    return rule


def _recipient_policy_problems(policy: Policy, tenants: dict[str, Tenant]) -> Iterable[tuple[str, str]]:
    for tenant in policy.recipients.tenants:
        if tenant not in tenants:
            yield f"recipients.tenants.{tenant}", f"tenant {tenant!r} is not defined in {TENANTS_FILE}"


def _campaign_problems(
    campaigns_file: CampaignsFile,
    tenants: dict[str, Tenant],
    segments: dict[str, dict[str, Segment]],
    policy: Policy,
) -> Iterable[tuple[str, str]]:
    for i, campaign in enumerate(campaigns_file.campaigns):
        at = f"campaigns[{i}]"
        tenant = tenants.get(campaign.tenant)
        if tenant is None:
            yield f"{at}.tenant", f"tenant {campaign.tenant!r} is not defined in {TENANTS_FILE}"
            continue
        if campaign.segment is not None and campaign.segment not in segments[campaign.tenant]:
            yield (
                f"{at}.segment",
                f"segment {campaign.segment!r} is not defined for tenant {campaign.tenant!r} in {SEGMENTS_FILE}",
            )
        provider = campaign.trigger.event.provider if campaign.trigger is not None else None
        if provider is not None and getattr(tenant.accounts, provider.value) is None:
            why = f"{campaign.trigger.event} comes from {provider}, and tenant {campaign.tenant!r} has no {provider} account in {TENANTS_FILE}"
            yield f"{at}.trigger.event", why
        yield from segment_trigger_problems(campaign, segments[campaign.tenant], at)
        for j, content in enumerate(campaign.channels):
            if tenant.accounts.for_channel(content.channel) is None:
                yield (
                    f"{at}.channels[{j}].channel",
                    f"tenant {campaign.tenant!r} has no account for channel {content.channel} in {TENANTS_FILE} "
                    f"(configure one of: {', '.join(content.channel.traits.providers)})",
                )


def segment_trigger_problems(campaign: Campaign, segments: dict[str, Segment], at: str) -> Iterable[tuple[str, str]]:
    """A segment_entered trigger names a segment of the tenant; a trigger campaign's own segment
    is evaluated live for the triggered contacts, in the operational store only, so it cannot ask
    the warehouse (a behaviour clause)."""
    trigger = campaign.trigger
    if trigger is None:
        return
    if trigger.segment is not None and trigger.segment not in segments:
        yield f"{at}.trigger.segment", f"segment {trigger.segment!r} is not defined for tenant {campaign.tenant!r} in {SEGMENTS_FILE}"
    own = segments.get(campaign.segment) if campaign.segment is not None else None
    if own is not None and behaviours(own.rule):
        yield (
            f"{at}.segment",
            f"segment {campaign.segment!r} has a behaviour clause, which a trigger campaign cannot evaluate live; "
            "trigger on segment_entered of it instead",
        )


def _raise_if(file: Path, problems: Iterable[tuple[str, str]]) -> None:
    found = list(problems)
    if found:
        raise PolicyError(file, found)


def _load(model: type[Model], path: Path) -> Model:
    data = _read_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(path, [(_key_path(e["loc"]), _reason(e)) for e in exc.errors()]) from None


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path, [("(file)", f"cannot read: {exc}")]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise PolicyError(path, [(exc.where, exc.why)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        why = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise PolicyError(path, [(where, f"YAML syntax error: {why}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(path, [("(file)", f"YAML error: {exc}")]) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, where: str, why: str):
        super().__init__(why)
        self.where, self.why = where, why


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys, reporting the key path.

    The check walks the composed node tree before construction, where keys are still raw and
    ``<<`` merge keys are distinguishable (a merged key overridden locally is not a duplicate).
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique_keys(node, ())
        return super().construct_document(node)


def _check_unique_keys(node: yaml.Node, path: tuple[str | int, ...]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(item, (*path, index))
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            if key in first_line:
                mark = key_node.start_mark
                raise _DuplicateKey(
                    f"{_key_path((*path, key))} (line {mark.line + 1}, column {mark.column + 1})",
                    f"duplicate key {key!r} (first defined at line {first_line[key]}); YAML would keep only the last",
                )
            first_line[key] = key_node.start_mark.line + 1
            _check_unique_keys(value_node, (*path, key))


def _key_path(loc: Sequence[str | int]) -> str:
    """``('campaigns', 0, 'channels', 1, 'subject')`` -> ``campaigns[0].channels[1].subject``."""
    out = ""
    for part in loc:
        if part in RULE_TAGS:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for an invalid mapping key
            out += " (key)"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _reason(error: Any) -> str:
    """Pydantic's message, plus the offending scalar where the message does not already say it."""
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden", "value_error") and isinstance(value, str | int | float | date):
        message += f" (got {value!r})" if isinstance(value, str) else f" (got {value})"
    return message

"""The template library (``templates.yaml``): named message templates per tenant, with immutable
numbered versions, content per channel × language and typed, declared variables.

A campaign channel pins ``{name, version}`` (``policies/template_refs.py``) instead of inline text,
so a campaign sent in November renders the same words in December, and an operator can see which
version went out. Every Jinja2 part is parsed here, at load, by the same sandboxed environment that
renders it (``policies/templates.py``); a name the template reads that is neither declared under
``variables`` nor built in is an error that names the part and its template line — a typo like
``{{ discont }}`` would otherwise fail every send at render time.

Immutability across time is the operational store's business (``orchestrator_assets/
template_history.py`` records each version's ``content_hash`` the first time it is seen); here a
version is only checked for what one file can tell.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import StrEnum
from html.parser import HTMLParser
from typing import Annotated, Any

from jinja2 import nodes
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from policies.campaigns import Campaign, CampaignsFile, ChannelContent, TemplateSpec, _check_template
from policies.channels import Channel
from policies.fields import NonBlank, Slug, StrictModel, TenantId
from policies.template_refs import MessageTemplateRef, VariableName
from policies.templates import parse_template, referenced_variables

# What every render provides (orchestrator_assets/campaigns.py): no declaration needed.
BUILTIN_VARIABLES = frozenset({"contact", "unsubscribe_url", "deep_link_token", "erid"})
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")]


class VariableType(StrEnum):
    STRING = "string"
    INT = "int"
    DECIMAL = "decimal"
    BOOL = "bool"
    DATE = "date"


_ADAPTERS: dict[VariableType, TypeAdapter] = {
    VariableType.STRING: TypeAdapter(str),
    VariableType.INT: TypeAdapter(int),
    VariableType.DECIMAL: TypeAdapter(Decimal),
    VariableType.BOOL: TypeAdapter(bool),
    VariableType.DATE: TypeAdapter(dt.date),
}


def coerce(kind: VariableType, value: Any) -> Any:
    """``value`` as a ``kind``; raises ValueError naming the type. Strict about lossy input: 2.5 is not an int."""
    try:
        return _ADAPTERS[kind].validate_python(value, strict=kind != VariableType.DECIMAL and not isinstance(value, str))
    except ValidationError:
        raise ValueError(f"{value!r} is not a valid {kind}") from None


class Variable(StrictModel):
    type: VariableType
    default: Any = None  # None: the campaign must give a value

    @model_validator(mode="after")
    def _default_has_the_type(self) -> Variable:
        if self.default is not None:
            coerce(self.type, self.default)
        return self


class Parts(StrictModel):
    """One channel's message in one language; ``template`` maps a WhatsApp message to its
    provider-approved template, whose variables are rendered from the same context."""

    subject: NonBlank | None = None
    text: NonBlank
    html: NonBlank | None = None
    template: TemplateSpec | None = None

    def sources(self) -> Iterable[tuple[str, str]]:
        """(part name, Jinja2 source) of every template this message renders."""
        for part in ("subject", "text", "html"):
            if (source := getattr(self, part)) is not None:
                yield part, source
        for number, source in enumerate(self.template.variables if self.template else (), start=1):
            yield f"template variable {number}", source


class _TagFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)


def _literal_tags(ast: nodes.Template) -> list[str]:
    """HTML tags in the template's literal text (a Telegram/VK message is sent as plain text)."""
    finder = _TagFinder()
    for data in ast.find_all(nodes.TemplateData):
        finder.feed(data.data)
    return finder.tags


def _undeclared(source: str, declared: Iterable[str]) -> list[tuple[str, int]]:
    """(name, first template line) of every variable ``source`` reads that is not declared."""
    ast = parse_template(source)
    unknown = referenced_variables(ast) - BUILTIN_VARIABLES - set(declared)
    lines = {}
    for name in ast.find_all(nodes.Name):
        if name.name in unknown and name.ctx == "load":
            lines.setdefault(name.name, name.lineno)
    return sorted(lines.items(), key=lambda item: (item[1], item[0]))


def _check_parts(channel: Channel, language: str, parts: Parts, declared: Iterable[str]) -> None:
    where = f"channels.{channel}.{language}"
    if channel.traits.needs_subject and parts.subject is None:
        raise ValueError(f"{where}: {channel} needs a subject")
    if parts.subject is not None and not channel.traits.needs_subject:
        raise ValueError(f"{where}: {channel} messages have no subject")
    if parts.html is not None and not channel.traits.allows_html:
        raise ValueError(f"{where}: {channel} messages have no html part")
    if parts.template is not None and not channel.traits.allows_template:
        raise ValueError(f"{where}: {channel} has no provider templates")
    for part, source in parts.sources():
        try:
            _check_template(source, part, channel if not part.startswith("template") else None)
        except ValueError as exc:
            raise ValueError(f"{where}.{part}: {exc}") from None
        for name, line in _undeclared(source, declared):
            raise ValueError(
                f"{where}.{part}: template line {line}: variable {name!r} is not declared "
                f"(declare it under `variables` with a type, or use a built-in: {', '.join(sorted(BUILTIN_VARIABLES))})"
            )
    if channel in (Channel.TELEGRAM, Channel.VK) and (tags := _literal_tags(parse_template(parts.text))):
        raise ValueError(
            f"{where}.text: HTML markup <{tags[0]}> would reach the reader as literal text: "
            f"{channel} messages are sent as plain text (the connector sets no parse_mode)"
        )


class Version(StrictModel):
    version: int = Field(ge=1)
    fallback_language: Language
    variables: dict[VariableName, Variable] = Field(default_factory=dict)
    channels: dict[Channel, dict[Language, Parts]] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Version:
        builtin = sorted(BUILTIN_VARIABLES & set(self.variables))
        if builtin:
            raise ValueError(f"variables {builtin} are built in; choose other names")
        for channel, languages in self.channels.items():
            if self.fallback_language not in languages:
                raise ValueError(
                    f"channels.{channel}: no content in the fallback language {self.fallback_language!r} "
                    f"(has: {', '.join(sorted(languages))}); a contact in any other language would get nothing"
                )
            for language, parts in languages.items():
                _check_parts(channel, language, parts, self.variables)
        return self

    @property
    def content_hash(self) -> str:
        """SHA-256 of everything that decides what a recipient reads: the version's identity over time."""
        content = self.model_dump(mode="json", exclude={"version"})
        return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def language_for(self, channel: Channel, wanted: str | None) -> str:
        """The contact's language when this channel has it, else the fallback language."""
        language = (wanted or "").strip().lower()
        return language if language in self.channels[channel] else self.fallback_language

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared variable's value: ``given`` (coerced to its type) or the default."""
        unknown = sorted(set(given) - set(self.variables))
        if unknown:
            raise ValueError(f"values for undeclared variables {unknown} (declared: {', '.join(sorted(self.variables)) or 'none'})")
        values = {}
        for name, variable in self.variables.items():
            value = given.get(name, variable.default)
            if value is None:
                raise ValueError(f"variable {name!r} has no default: give it under `values`")
            try:
                values[name] = coerce(variable.type, value)
            except ValueError as exc:
                raise ValueError(f"variable {name!r}: {exc}") from None
        return values


class LibraryTemplate(StrictModel):
    name: Slug
    description: NonBlank | None = None
    versions: list[Version] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing_versions(self) -> LibraryTemplate:
        numbers = [v.version for v in self.versions]
        if numbers != sorted(set(numbers)):
            raise ValueError(f"versions must be listed once each, oldest first (got {numbers}); never edit a published one, add the next")
        return self

    def version(self, number: int) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)


class TemplatesFile(StrictModel):
    templates: dict[TenantId, list[LibraryTemplate]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> TemplatesFile:
        for tenant, templates in self.templates.items():
            names = [t.name for t in templates]
            if dupes := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"templates.{tenant}: template(s) {dupes} defined more than once")
        return self

    def for_tenant(self, tenant: str) -> dict[str, LibraryTemplate]:
        return {t.name: t for t in self.templates.get(tenant, [])}


def resolve(library: Mapping[str, LibraryTemplate], ref: MessageTemplateRef) -> Version:
    """The pinned version; raises ValueError when it is not in the library."""
    template = library.get(ref.name)
    if template is None:
        raise ValueError(f"template {ref.name!r} is not in the library (known: {', '.join(sorted(library)) or 'none'})")
    version = template.version(ref.version)
    if version is None:
        raise ValueError(f"template {ref.name!r} has no version {ref.version} (has: {[v.version for v in template.versions]})")
    return version


def reference_problems(campaigns_file: CampaignsFile, templates: TemplatesFile) -> Iterable[tuple[str, str]]:
    """Every campaign channel whose ``message_template`` names a missing template, version or
    channel, or gives values that do not fit the declared variables; (key path, why)."""
    for i, campaign in enumerate(campaigns_file.campaigns):
        library = templates.for_tenant(campaign.tenant)
        for at, content, ref in _template_refs(i, campaign):
            try:
                version = resolve(library, ref)
                if content.channel not in version.channels:
                    raise ValueError(f"template {ref.name!r} version {ref.version} has no {content.channel} content")
                version.values(ref.values)
            except ValueError as exc:
                yield at, str(exc)


def _template_refs(i: int, campaign: Campaign) -> Iterable[tuple[str, ChannelContent, MessageTemplateRef]]:
    """(key path, channel content, reference) of every library pin of a campaign, its A/B
    variants' included."""
    for j, content in enumerate(campaign.channels):
        if content.message_template is not None:
            yield f"campaigns[{i}].channels[{j}].message_template", content, content.message_template
    for k, variant in enumerate(campaign.experiment.variants if campaign.experiment else ()):
        for channel, override in variant.channels.items():
            if override.message_template is not None and (content := campaign.content_for(channel)) is not None:
                yield f"campaigns[{i}].experiment.variants[{k}].channels.{channel}.message_template", content, override.message_template


def pinned_versions(campaign: Campaign) -> list[MessageTemplateRef]:
    """One reference per (template, version) the campaign may send, its A/B variants' included."""
    refs = {(ref.name, ref.version): ref for _, _, ref in _template_refs(0, campaign)}
    return [refs[key] for key in sorted(refs)]


def library_content(version: Version, content: ChannelContent, language: str) -> ChannelContent:
    """The campaign channel as if it had been written inline in ``language``: the library's parts,
    the campaign's buttons and attachments. Validated like inline content, named for its campaign."""
    parts = version.channels[content.channel][language]
    resolved = ChannelContent.model_validate(
        {
            "channel": content.channel,
            **parts.model_dump(exclude_none=True, exclude={"template"}),
            "template": parts.template or content.template,
            "buttons": content.buttons,
            "attachments": content.attachments,
        }
    )
    resolved._campaign = content.campaign
    return resolved


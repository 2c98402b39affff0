"""Rendering campaign templates for one contact, safely and loudly.

Templates are operator-written, so they run in Jinja2's sandbox. Undefined variables raise
(``StrictUndefined``) instead of rendering as empty text: a message that says "Привет, !" or
links to an empty unsubscribe URL must never be sent. Only the email HTML part is autoescaped;
plain-text parts would otherwise show ``&amp;`` to the reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from resources.channels.sms_segments import segments as sms_segments

if TYPE_CHECKING:
    from policies.schema import Button, ChannelContent


class TemplateRenderError(ValueError):
    """A template could not be rendered for a contact; the message names campaign, channel,
    part and the missing variable, so the caller can skip or fail that send with a reason."""


class _ContactFields(dict):
    """The contact's non-empty fields; its own type so a missing one is reported as contact.<field>."""


class _StrictUndefined(StrictUndefined):
    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None, exc: type = UndefinedError):
        if hint is None and isinstance(obj, _ContactFields):
            hint = f"contact.{name} is not set for this contact (use `contact.{name} | default('…')` for a fallback)"
        super().__init__(hint, obj, name, exc)


_TEXT_ENV = SandboxedEnvironment(undefined=_StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML_ENV = SandboxedEnvironment(undefined=_StrictUndefined, autoescape=True, keep_trailing_newline=True)


def parse_template(source: str) -> nodes.Template:
    """Parse without compiling; raises ``jinja2.TemplateSyntaxError``. Used by the schema."""
    return _TEXT_ENV.parse(source)


def static_text_length(ast: nodes.Template) -> int:
    """Characters of literal text that every render contains (top-level output only, not the
    branches of ``if``/``for``), i.e. a lower bound of the rendered length."""
    return sum(
        len(child.data)
        for node in ast.body
        if isinstance(node, nodes.Output)
        for child in node.nodes
        if isinstance(child, nodes.TemplateData)
    )


def referenced_variables(ast: nodes.Template) -> set[str]:
    """Top-level names the template reads from its context (e.g. ``contact``, ``unsubscribe_url``)."""
    return meta.find_undeclared_variables(ast)


@lru_cache(maxsize=512)
def _compiled(source: str, html: bool) -> Template:
    """Compile once per template source: a campaign renders the same few templates per contact."""
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


@dataclass(frozen=True)
class RenderedMessage:
    subject: str | None
    text: str
    html: str | None
    buttons: tuple[Button, ...]
    template_variables: tuple[str, ...] = ()


def _where(content: ChannelContent, part: str) -> str:
    return f"campaign {content.campaign or '?'!r}, channel {content.channel}, {part}"


def render_message(channel_content: ChannelContent, contact: Mapping[str, Any], extra: Mapping[str, Any]) -> RenderedMessage:
    """Render one channel's message for one contact.

    ``contact`` is the contact row; NULL or empty fields are left out, so ``{{ contact.first_name }}``
    fails for a nameless contact unless the template asks for a ``default``. ``extra`` holds the
    other variables (``unsubscribe_url`` …) and must not redefine ``contact``. The subject is
    collapsed to one line because contact data may contain newlines and a subject cannot.
    """
    if "contact" in extra:
        raise ValueError("extra must not contain 'contact'; pass the contact row as `contact`")
    context = {**extra, "contact": _ContactFields({k: v for k, v in contact.items() if v is not None and v != ""})}
    channel = channel_content.channel

    def render(part: str, source: str | None, html: bool = False) -> str | None:
        if source is None:
            return None
        try:
            return _compiled(source, html).render(context)
        # Anything a template expression raises is the template's failure for this contact.
        except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRenderError(f"{_where(channel_content, part)}: {exc}") from exc

    subject = render("subject", channel_content.subject)
    text = render("text", channel_content.text)
    html = render("html", channel_content.html, html=True)
    limit = channel.traits.max_text_chars
    if limit is not None and len(text) > limit:
        where = _where(channel_content, "text")
        raise TemplateRenderError(f"{where}: rendered {len(text)} characters; the limit is {limit}")
    if channel.traits.max_sms_segments is not None:
        info = sms_segments(text)
        if info.segments > channel.traits.max_sms_segments:
            raise TemplateRenderError(
                f"{_where(channel_content, 'text')}: rendered {info.segments} SMS segments ({info.encoding}, "
                f"{info.units} units); the cap is {channel.traits.max_sms_segments}"
            )
    template = channel_content.template
    variables = tuple(
        render(f"template variable {number}", source) for number, source in enumerate(template.variables if template else (), start=1)
    )
    return RenderedMessage(
        subject=" ".join(subject.split()) if subject is not None else None,
        text=text,
        html=html,
        buttons=tuple(channel_content.buttons),
        template_variables=variables,
    )

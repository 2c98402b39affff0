"""The Jinja2 side of campaign templates: one sandboxed environment that parses, inspects and
compiles them, for load-time validation (``policies/campaigns.py``) and rendering
(``policies/rendering.py``) alike.

Templates are operator-written, so they run in Jinja2's sandbox. Undefined variables raise
(``StrictUndefined``) instead of rendering as empty text: a message that says "Привет, !" or
links to an empty unsubscribe URL must never be sent. Only the email HTML part is autoescaped;
plain-text parts would otherwise show ``&amp;`` to the reader.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, UndefinedError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing


class ContactFields(dict):
    """The contact's non-empty fields; its own type so a missing one is reported as contact.<field>."""


class _StrictUndefined(StrictUndefined):
    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None, exc: type = UndefinedError):
        if hint is None and isinstance(obj, ContactFields):
            hint = f"contact.{name} is not set for this contact (use `contact.{name} | default('…')` for a fallback)"
        super().__init__(hint, obj, name, exc)


_TEXT_ENV = SandboxedEnvironment(undefined=_StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML_ENV = SandboxedEnvironment(undefined=_StrictUndefined, autoescape=True, keep_trailing_newline=True)


def parse_template(source: str) -> nodes.Template:
    """Parse without compiling; raises ``jinja2.TemplateSyntaxError``. Used by the campaign validators."""
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
def compiled_template(source: str, html: bool) -> Template:
    """Compile once per template source: a campaign renders the same few templates per contact."""
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)

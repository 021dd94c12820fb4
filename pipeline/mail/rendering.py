"""Mail templates: finding a Jinja2 pair and rendering it into a subject, a text and an HTML part.

A mail named ``NAME`` is two templates: ``NAME.txt`` (the text part, not escaped) and
``NAME.html`` (the HTML part, autoescaped, usually extending ``layout.html``). The text
template holds two blocks: ``{% block subject %}`` (one line) and ``{% block body %}``.
Templates run in Jinja2's sandbox with ``StrictUndefined``: a variable the context lacks is
an error, never an empty string.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import traceback
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from pipeline.errors import HeaderInjection, MailError, shown
from pipeline.header_text import first_header_breaker

#: The folder of the templates that ship with pipeline, in a source checkout.
SOURCE_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
#: Where ``pip install`` puts them (``data_files`` in setup.cfg).
INSTALLED_TEMPLATES = Path(sys.prefix) / "share" / "pipeline" / "templates"
#: What a template name may be: no dots or slashes, so it never leaves a template folder.
TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Rendered:
    """A rendered mail: subject, text part and HTML part."""

    subject: str
    text: str
    html: str


class TemplateRenderer:
    """Renders mail templates from the configured folders, then the built-in ones.

    Parameters:
      template_dirs: Folders searched first (a deploying service's own templates).
    """

    def __init__(self, template_dirs: Sequence[Path] = ()) -> None:
        builtin = SOURCE_TEMPLATES if SOURCE_TEMPLATES.is_dir() else INSTALLED_TEMPLATES
        self.search_path = [*template_dirs, builtin]
        self.environment = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(p) for p in self.search_path]),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            keep_trailing_newline=True,
            # Each template is read once per process, not looked at on disk with every mail: a
            # changed template reaches workers as code does, when they restart.
            auto_reload=False,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        """Render the ``name`` pair with ``context``.

        Raises:
          MailError: The name is not a plain name, a template is missing or lacks a block, or
            the context lacks a variable.
          HeaderInjection: The rendered subject holds a line break.
        """
        check_template_request(name, context)
        with self._errors_named(f"{name}.txt"):
            text_template = self.environment.get_template(f"{name}.txt")
            blocks = text_template.new_context(dict(context))
            subject, text = (self._block(text_template, block, blocks) for block in ("subject", "body"))
        with self._errors_named(f"{name}.html"):
            html = self.environment.get_template(f"{name}.html").render(context)
        return Rendered(subject=check_header("subject", subject.strip()), text=text.lstrip("\n"), html=html)

    def _block(self, template: jinja2.Template, block: str, context: Any) -> str:
        if block not in template.blocks:
            raise MailError(f"template '{template.name}' has no '{{% block {block} %}}'")
        try:
            return "".join(template.blocks[block](context))
        except Exception:
            # As Template.render does: the traceback then points at the template's own lines.
            self.environment.handle_exception()
            raise

    @contextlib.contextmanager
    def _errors_named(self, filename: str) -> Iterator[None]:
        try:
            yield
        except jinja2.TemplateNotFound as exc:
            folders = ", ".join(str(p) for p in self.search_path)
            raise MailError(f"template {exc.name!r} not found in {folders}") from exc
        except jinja2.UndefinedError as exc:
            raise MailError(f"template '{filename}': {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise MailError(f"template '{filename}' failed: {exc}") from exc
        except MailError:
            raise
        except Exception as exc:
            # Context the template cannot use (a text where a number is formatted): the same
            # context fails the same way every time, so it is bad input, not a passing fault.
            raise MailError(f"template '{filename}' {_line_of(exc, filename)}failed on the context: {exc!r}") from exc


def _line_of(exc: BaseException, filename: str) -> str:
    """``line N `` of the template where ``exc`` was raised, when the traceback says."""
    line = None
    for frame, number in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename.endswith(filename):
            line = number
    return f"line {line} " if line is not None else ""


def check_template_request(name: object, context: object) -> None:
    """Check what a mail is rendered from, before anything is sent or queued.

    Raises:
      MailError: ``name`` is not a plain template name, or ``context`` not a mapping of names.
    """
    if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name):
        raise MailError(f"template name {shown(name)} is not a plain name (letters, digits, '_' and '-')")
    if not isinstance(context, Mapping) or not all(isinstance(key, str) for key in context):
        raise MailError(f"context {shown(context)} is not a mapping of variable names to values")


def check_header(name: str, value: str) -> str:
    """``value``, refused if it holds a character a header has no place for.

    Line breaks would add headers of their own (CR, LF, and what a mail generator may also take
    for one: vertical tab, form feed, Unicode's line and paragraph separators), and no control
    character belongs in a header.

    Raises:
      HeaderInjection: It does; the message names the header and the character.
    """
    character = first_header_breaker(value)
    if character is not None:
        raise HeaderInjection(
            f"{name} {value!r} holds {unicodedata.name(character, repr(character))} "
            f"(U+{ord(character):04X}), a line break or control character (header injection refused)"
        )
    return value


@functools.cache
def get_renderer(template_dirs: tuple[Path, ...]) -> TemplateRenderer:
    """One renderer per template search path, so templates are compiled once per process."""
    return TemplateRenderer(template_dirs)

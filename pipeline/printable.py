"""Text from records, messages and servers made fit to show on a page or a terminal.

A job's error, its progress phase, an actor's name from another service's message: any of them
may hold control characters. On a page they would garble the text; on an operator's terminal
an escape sequence would be obeyed (clear the screen, set the title, write the clipboard), so
every control character is shown as a visible escape instead.
"""

from __future__ import annotations

from typing import Any


def printable(value: Any, limit: int = 2000) -> str:
    """``value`` as text with every control character but newline and tab (C0, DEL and C1),
    and every lone surrogate (which no page or terminal can encode), shown as an escape, cut
    to ``limit`` characters. On a page, autoescape then makes it safe as HTML.
    """
    text = value if isinstance(value, str) else str(value)
    shown = "".join(c if c in "\n\t" or _shown_as_is(ord(c)) else _escape(ord(c)) for c in text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _shown_as_is(code: int) -> bool:
    return (32 <= code < 127 or code >= 160) and not 0xD800 <= code <= 0xDFFF


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

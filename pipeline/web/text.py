"""Text from records made fit to show: control characters and lone surrogates become visible
escapes.
"""

from __future__ import annotations

from typing import Any


def printable(value: Any, limit: int = 2000) -> str:
    """``value`` as text with every control character but newline and tab, and every lone
    surrogate (which no page can encode), shown as an escape, cut to ``limit`` characters
    (autoescape then makes it safe as HTML).
    """
    text = value if isinstance(value, str) else str(value)
    shown = "".join(c if c in "\n\t" or _shown_as_is(ord(c)) else _escape(ord(c)) for c in text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _shown_as_is(code: int) -> bool:
    return code >= 32 and code != 127 and not 0xD800 <= code <= 0xDFFF


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

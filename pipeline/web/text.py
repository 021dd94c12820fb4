"""Text from records made fit to show: control characters become visible escapes."""

from __future__ import annotations

from typing import Any


def printable(value: Any, limit: int = 2000) -> str:
    """``value`` as text with every control character but newline and tab shown as an escape,
    cut to ``limit`` characters (autoescape then makes it safe as HTML).
    """
    text = value if isinstance(value, str) else str(value)
    shown = "".join(c if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127) else f"\\x{ord(c):02x}" for c in text)
    return shown if len(shown) <= limit else shown[:limit] + "…"

"""What a mail header value may not hold: the one rule the settings and the mail builder share."""

from __future__ import annotations

import unicodedata

#: Unicode categories no header value may hold: controls (CR, LF, VT, FF, NUL...), line and
#: paragraph separators. A mail generator may take any of them for a line break.
HEADER_BREAKERS = frozenset({"Cc", "Zl", "Zp"})


def first_header_breaker(value: str) -> str | None:
    """The first character of ``value`` that has no place in a header, or None."""
    if value.isprintable():
        # Printable excludes every category above (and more): the common case, decided in C.
        return None
    return next((c for c in value if unicodedata.category(c) in HEADER_BREAKERS), None)

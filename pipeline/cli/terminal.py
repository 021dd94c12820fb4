"""What the command prints to an operator's terminal: text from records, messages and servers
as plain text, never as rich markup (``[/]`` in a job's error would stop the table) nor as
escape sequences (which the terminal would obey).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from pipeline.printable import printable

#: The longest text a table cell shows.
CELL_LIMIT = 200


def cell(value: Any, limit: int = CELL_LIMIT) -> Text:
    """``value`` as a rich table cell (or caption): printable, cut to ``limit``, not markup."""
    return Text(printable("" if value is None else value, limit))

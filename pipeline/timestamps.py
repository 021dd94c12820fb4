"""The one timestamp format of pipeline: UTC, ISO 8601, milliseconds."""

from __future__ import annotations

import datetime
import time

#: The last second formatted, and its text up to the seconds: a burst of jobs formats each
#: second once (every job's record carries several timestamps).
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds, the format of every record timestamp."""
    return iso_from_millis(time.time_ns() // 1_000_000)


def iso_from_millis(millis: int) -> str:
    """A Unix time in milliseconds (Dramatiq's ``eta``) in the format of :func:`now_iso`."""
    global _last_second
    seconds, part = divmod(int(millis), 1000)
    second, text = _last_second
    if second != seconds:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        text = moment.isoformat(timespec="seconds").removesuffix("+00:00")
        _last_second = (seconds, text)
    return f"{text}.{part:03d}+00:00"

"""The one timestamp format of pipeline: UTC, ISO 8601, milliseconds."""

from __future__ import annotations

import datetime
import math
import time

#: Seconds formatted lately, to their text up to the seconds: a burst of jobs formats each second
#: once (a job's record carries several timestamps, some from when it was sent, some from now).
_seconds: dict[int, str] = {}
#: Seconds kept in :data:`_seconds` at most; past it, the cache starts again.
_KEEP_SECONDS = 512


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds, the format of every record timestamp."""
    return iso_from_millis(time.time_ns() // 1_000_000)


def iso_from_millis(millis: int) -> str:
    """A Unix time in milliseconds (Dramatiq's ``eta``) in the format of :func:`now_iso`."""
    seconds, part = divmod(int(millis), 1000)
    text = _seconds.get(seconds)
    if text is None:
        if len(_seconds) >= _KEEP_SECONDS:
            _seconds.clear()
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        text = _seconds[seconds] = moment.isoformat(timespec="seconds").removesuffix("+00:00")
    return f"{text}.{part:03d}+00:00"


def seconds_until(iso: object) -> int:
    """Whole seconds from now until the time ``iso`` (a timestamp of :func:`now_iso`'s format),
    rounded up; 0 when it is past, or not such a timestamp.
    """
    if not isinstance(iso, str):
        return 0
    try:
        moment = datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0
    return max(0, math.ceil(moment - time.time()))

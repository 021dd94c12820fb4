"""The one timestamp format of pipeline: UTC, ISO 8601, milliseconds."""

from __future__ import annotations

import datetime


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds, the format of every record timestamp."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def iso_from_millis(millis: int) -> str:
    """A Unix time in milliseconds (Dramatiq's ``eta``) in the format of :func:`now_iso`."""
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")

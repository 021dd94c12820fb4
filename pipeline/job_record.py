"""The shape of a job record, as :class:`~pipeline.results.AsyncResult` returns it.

A record is JSON: these ``TypedDict`` classes name its fields for readers and type checkers.
Every field but ``message_id`` and ``state`` may be missing (a record is built up by several
writes: the sender's ``QUEUED``, the worker's ``STARTED`` and its final write).
"""

from __future__ import annotations

import traceback
from typing import Any, NotRequired, TypedDict


class JobError(TypedDict):
    """Why an attempt failed: the exception's qualified type, its message and the traceback."""

    type: str
    message: str
    traceback: NotRequired[str]


class Progress(TypedDict):
    """What a running job last reported of its progress."""

    done: int
    total: int | None
    phase: str | None
    updated_at: str


class JobRecord(TypedDict):
    """One job's record: what it is, where it stands, and how it ended."""

    message_id: str
    state: str
    actor: NotRequired[str]
    queue: NotRequired[str]
    priority: NotRequired[int]
    attempt: NotRequired[int]
    enqueued_at: NotRequired[str]
    eta: NotRequired[str]
    started_at: NotRequired[str]
    next_attempt_at: NotRequired[str | None]
    finished_at: NotRequired[str]
    revoked_at: NotRequired[str]
    #: When and why the last attempt was cut short by its worker's shutdown (``INTERRUPTED``).
    interrupted_at: NotRequired[str]
    interrupted: NotRequired[str]
    cut_off: NotRequired[dict[str, Any]]
    requeued_at: NotRequired[str]
    requeues: NotRequired[int]
    result: NotRequired[Any]
    error: NotRequired[JobError]
    progress: NotRequired[Progress]


def error_info(exception: BaseException) -> JobError:
    """The ``error`` of a record: the exception's qualified type, message and traceback."""
    cls = type(exception)
    module = "" if cls.__module__ == "builtins" else cls.__module__ + "."
    return {
        "type": module + cls.__qualname__,
        "message": _message_of(exception),
        "traceback": "".join(traceback.format_exception(exception, limit=30)),
    }


def _message_of(exception: BaseException) -> str:
    """``str(exception)``, or what says it failed: an actor's exception whose ``__str__`` raises
    must still leave a record that says the job failed.
    """
    try:
        return str(exception)
    except Exception as exc:  # noqa: BLE001 - whatever an actor's __str__ raises
        return f"<its message could not be made: {type(exc).__name__}>"


#: The largest count a progress report holds: the largest integer every JSON reader (a
#: browser's among them) holds exactly.
MAX_PROGRESS_COUNT = 2**53


def is_progress_count(value: object) -> bool:
    """Whether ``value`` is a count a progress report holds (``done``, ``total``): a number, not
    a bool, from 0 to :data:`MAX_PROGRESS_COUNT` (so not NaN nor infinite).
    """
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_PROGRESS_COUNT

"""The states of a job and the order they move in.

A job record only moves forward. Forward is measured by a *rank*: ``SCHEDULED`` is lowest, then
``QUEUED``; each attempt's ``STARTED``, then its ``RETRY`` or ``INTERRUPTED``, come after the
previous attempt's, and the finished states
(``SUCCESS``, ``FAILURE``, ``REVOKED``) rank above everything and are never left. The record
store compares ranks atomically in Redis, so a late or duplicate write cannot turn a record back.
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """Where a job stands; the names are Celery's where the meaning is the same."""

    #: No record: the id is unknown, or its record expired.
    PENDING = "PENDING"
    #: Sent with a delay: kept until its due time, which the record's ``eta`` says, then queued.
    #: (A retry waiting out its backoff reads ``RETRY``, with ``next_attempt_at``.)
    SCHEDULED = "SCHEDULED"
    #: Taken by RabbitMQ, waiting for a worker.
    QUEUED = "QUEUED"
    #: A worker is running it (the record says which attempt).
    STARTED = "STARTED"
    #: An attempt failed; another is scheduled.
    RETRY = "RETRY"
    #: An attempt was cut short by a worker's shutdown (a deploy): not a failure, and no retry
    #: is spent; the message went back to its queue and the next delivery is the next attempt.
    INTERRUPTED = "INTERRUPTED"
    #: Finished; the record holds the result.
    SUCCESS = "SUCCESS"
    #: Finished with an error that was not retried (or retries ran out).
    FAILURE = "FAILURE"
    #: Cancelled before it finished.
    REVOKED = "REVOKED"

    @property
    def ready(self) -> bool:
        """True for the finished states, which no later write changes."""
        return self in READY_STATES


#: States a job ends in; a record in one of them is final.
READY_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED})


def state_named(value: object) -> JobState:
    """The state a record's ``state`` field names; ``PENDING`` for a value that names none (a
    record written by hand, or by a later version with a state this one does not know), as
    ``AsyncResult.state`` reads it.
    """
    if not isinstance(value, str) or value not in JobState.__members__:
        return JobState.PENDING
    return JobState(value)


#: The lowest rank of a finished state: above any attempt's.
FINAL_RANK = 1_000_000
#: The rank of ``FAILURE``.
FAILURE_RANK = FINAL_RANK
#: The rank of ``SUCCESS``: the one finished state that may replace another, ``FAILURE``. A copy
#: of a message can fail (its mail already claimed by the original) while the original delivers:
#: the record then ends with what happened, the success.
SUCCESS_RANK = FINAL_RANK + 1
#: The rank of ``REVOKED``.
REVOKED_RANK = FINAL_RANK + 2


def rank(state: JobState, attempt: int = 0) -> int:
    """The rank of ``state`` at ``attempt`` (1 for the first run); higher ranks win.

    ``RETRY`` and ``INTERRUPTED`` share a rank: each ends an attempt that a later one follows.

    Raises:
      ValueError: ``PENDING``, which is the absence of a record and is never written, or an
        attempt below 1 for ``STARTED``, ``RETRY`` and ``INTERRUPTED``.
    """
    if state is JobState.SUCCESS:
        return SUCCESS_RANK
    if state is JobState.FAILURE:
        return FAILURE_RANK
    if state is JobState.REVOKED:
        return REVOKED_RANK
    if state is JobState.QUEUED:
        return 0
    if state is JobState.SCHEDULED:
        return -1
    if state is JobState.PENDING:
        raise ValueError("PENDING is the absence of a record and is never written")
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")
    return 2 * attempt + (0 if state is JobState.STARTED else 1)


def may_replace(current_rank: int | None, new_rank: int) -> bool:
    """Whether a write of ``new_rank`` may replace a record at ``current_rank`` (None: no record).

    This is the rule the Redis script applies; it is spelled out here so it can be read and
    tested without Redis.
    """
    if current_rank is None:
        return True
    if current_rank >= FINAL_RANK:
        return current_rank == FAILURE_RANK and new_rank == SUCCESS_RANK
    return new_rank >= current_rank

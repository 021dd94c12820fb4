"""What a running actor asks about its own job: its id, whether it was revoked or its worker is
shutting down, and progress.

Progress reports and revocation checks never fail a job for Redis: while Redis is away a report
is dropped (and False returned), and a revocation is looked up in the worker's memory. A report
no reader could show (a count that is text or NaN) is refused with ``InvalidProgress``.

The job-records middleware tells this module which message each worker thread is running. It
imports neither Dramatiq nor the actors, so :mod:`pipeline.results` can offer these functions to
actors without loading Dramatiq into a client that only follows jobs.
"""

from __future__ import annotations

import logging
import threading

from pipeline.errors import (
    InvalidProgress,
    JobInterrupted,
    JobStopped,
    PipelineError,
    ResultBackendUnavailable,
    not_text,
    shown,
)
from pipeline.job_id import check_job_id
from pipeline.job_record import Progress, is_progress_count
from pipeline.states import JobState
from pipeline.store import revocations
from pipeline.store.records import get_store
from pipeline.timestamps import now_iso

_running = threading.local()
# Set once in a worker process whose shutdown asks its running jobs to stop.
_stop_requested = threading.Event()

logger = logging.getLogger(__name__)

#: The longest phase a progress report holds, in characters.
MAX_PHASE_LENGTH = 200

#: Why a job stopped, as its record and log say it.
REVOKED = "it was revoked"
SHUTTING_DOWN = "its worker is shutting down"


def set_current_message_id(message_id: str | None) -> None:
    """Note the message this worker thread now runs (None once it is done)."""
    _running.message_id = message_id


def current_message_id() -> str:
    """The id of the message this worker thread is processing.

    Raises:
      PipelineError: No message is being processed in this thread.
    """
    message_id: str | None = getattr(_running, "message_id", None)
    if message_id is None:
        raise PipelineError("no job is running in this thread: pass message_id")
    return message_id


def report_progress(
    done: int, total: int | None = None, phase: str | None = None, *, message_id: str | None = None
) -> bool:
    """Record a running job's progress, shown as ``AsyncResult.progress``.

    Parameters:
      done: Units of work done so far.
      total: Units in all, when known.
      phase: A short name for what the job is doing now.
      message_id: The job; the message this worker thread is processing when omitted.

    Returns:
      False when the record is missing or already finished, or Redis is away (the report is
      dropped).

    Raises:
      InvalidJobId: ``message_id`` is not a job id.
      InvalidProgress: ``done`` or ``total`` is not a number from 0 to 2**53, or ``phase`` is
        not text of at most 200 characters (a bug in the actor: the report is not recorded).
    """
    check_progress(done, total, phase)
    job_id = current_message_id() if message_id is None else check_job_id(message_id)
    progress: Progress = {"done": done, "total": total, "phase": phase, "updated_at": now_iso()}
    try:
        return get_store().update(job_id, progress=progress)
    except ResultBackendUnavailable as exc:
        logger.debug("Progress of job %s not recorded: %s", job_id, exc)
        return False


def check_progress(done: object, total: object, phase: object) -> None:
    """Refuse a progress report that no reader could show: a count that is not a number from 0
    to :data:`~pipeline.job_record.MAX_PROGRESS_COUNT`, a phase that is not text. ``done`` may
    pass ``total`` (an estimate the work outgrew).

    Raises:
      InvalidProgress: Naming the argument and what it holds.
    """
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidProgress(f"report_progress {name} must be a number, not {type(value).__name__} {shown(value)}")
        if not is_progress_count(value):
            raise InvalidProgress(f"report_progress {name} must be from 0 to 2**53, not {shown(value)}")
    if phase is None:
        return
    if not isinstance(phase, str):
        raise InvalidProgress(f"report_progress phase must be text, not {type(phase).__name__} {shown(phase)}")
    if len(phase) > MAX_PHASE_LENGTH:
        raise InvalidProgress(
            f"report_progress phase is {len(phase):,} characters, more than {MAX_PHASE_LENGTH}: name the phase, "
            "do not describe it"
        )
    try:
        phase.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidProgress(f"report_progress phase holds {not_text(exc)}") from None


def is_revoked(message_id: str | None = None) -> bool:
    """Whether the job (the one this worker thread runs, when omitted) has been revoked.

    In a worker process this is a lookup in memory (see :mod:`pipeline.store.revocations`),
    cheap enough to call between any two batches of work; elsewhere it reads the record.
    """
    message_id = current_message_id() if message_id is None else check_job_id(message_id)
    watcher = revocations.current_watcher()
    if watcher is not None:
        return message_id in watcher
    return get_store().state(message_id) is JobState.REVOKED


def request_stop() -> None:
    """Ask every job of this worker process to stop at its next check (its worker shuts down)."""
    _stop_requested.set()


def stop_requested() -> bool:
    """Whether this worker process is shutting down and asks its jobs to stop."""
    return _stop_requested.is_set()


def should_stop() -> bool:
    """Whether the job this worker thread runs should stop: it was revoked, or its worker is
    shutting down.
    """
    return stop_requested() or is_revoked()


def stop_if_revoked(doing: str = "stopped") -> None:
    """Stop the job this worker thread runs if it was revoked or its worker is shutting down:
    call it between batches of work.

    Parameters:
      doing: Where the job stood, for the log (``"stopped after 500 of 2000 rows"``).

    Raises:
      JobStopped: The job was revoked; let it propagate (the message is acknowledged and the
        record stays ``REVOKED``).
      JobInterrupted: The worker is shutting down; let it propagate (the message goes back to
        its queue, the record reads ``INTERRUPTED``, and no retry is spent).
    """
    if is_revoked():
        raise JobStopped(f"job {current_message_id()} {doing}: {REVOKED}")
    if stop_requested():
        raise JobInterrupted(f"job {current_message_id()} {doing}: {SHUTTING_DOWN}")


def interruption(stopped: JobStopped) -> JobStopped:
    """``stopped``, raised where a job's own code found :func:`should_stop` true (which does not
    say why), with the reason added: a ``JobInterrupted`` when its worker is shutting down and
    the job was not revoked, else a ``JobStopped`` that says it was revoked.
    """
    if stop_requested() and not is_revoked():
        return JobInterrupted(f"{stopped}: {SHUTTING_DOWN}")
    return JobStopped(f"{stopped}: {REVOKED}")

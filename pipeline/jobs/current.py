"""What a running actor asks about its own job: its id, whether it was revoked, and progress.

The job-records middleware tells this module which message each worker thread is running. It
imports neither Dramatiq nor the actors, so :mod:`pipeline.results` can offer these functions to
actors without loading Dramatiq into a client that only follows jobs.
"""

from __future__ import annotations

import threading

from pipeline.errors import PipelineError
from pipeline.job_record import Progress
from pipeline.states import JobState
from pipeline.store import revocations
from pipeline.store.records import get_store
from pipeline.timestamps import now_iso

_running = threading.local()


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
      False when the record is missing or already finished (the report is dropped).
    """
    progress: Progress = {"done": done, "total": total, "phase": phase, "updated_at": now_iso()}
    return get_store().update(message_id or current_message_id(), progress=progress)


def is_revoked(message_id: str | None = None) -> bool:
    """Whether the job (the one this worker thread runs, when omitted) has been revoked.

    In a worker process this is a lookup in memory (see :mod:`pipeline.store.revocations`),
    cheap enough to call between any two batches of work; elsewhere it reads the record.
    """
    message_id = message_id or current_message_id()
    watcher = revocations.current_watcher()
    if watcher is not None:
        return message_id in watcher
    return get_store().state(message_id) is JobState.REVOKED

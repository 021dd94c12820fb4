"""``AsyncResult``, the lookup of a job by its message id, and what a running actor reports.

A service that knows a message id asks ``AsyncResult(message_id)`` where the job stands and
waits for its result; an actor reports progress and checks for revocation with
:func:`report_progress` and :func:`is_revoked`. Importing this module loads neither Dramatiq
nor the actors: a service that only follows jobs needs Redis and the settings, nothing more.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pipeline.errors import JobFailed, JobRevoked
from pipeline.job_id import check_job_id
from pipeline.job_record import JobError, JobRecord, Progress
from pipeline.jobs.current import current_message_id, is_revoked, report_progress, stop_if_revoked
from pipeline.settings import Settings
from pipeline.states import READY_STATES, JobState
from pipeline.store import revocations
from pipeline.store.records import get_store
from pipeline.store.schedule import Schedule
from pipeline.timestamps import now_iso

__all__ = ["AsyncResult", "current_message_id", "is_revoked", "rebuild_error", "report_progress", "stop_if_revoked"]

#: Modules whose exception types ``get()`` rebuilds from a failed record.
REBUILDABLE_MODULES = ("builtins", "pipeline")


class AsyncResult:
    """A handle on one job, knowing only its message id.

    It reads the job's record in Redis on every call and needs no actor and no broker, so any
    service with the settings can use it.

    Parameters:
      message_id: The id of the message, as returned by ``send()`` (``message.message_id``).
      settings: Where the records live; the process's settings when omitted.

    Raises:
      InvalidJobId: ``message_id`` is not a job id (so it never reaches a Redis key).

    Examples:
      >>> r = AsyncResult(message_id)
      >>> r.state
      <JobState.STARTED: 'STARTED'>
      >>> r.get(timeout=30)
      {'pong': 1}
    """

    def __init__(self, message_id: str, settings: Settings | None = None) -> None:
        self.id = check_job_id(message_id)
        self._store = get_store(settings)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def info(self, timeout: float | None = None) -> JobRecord | None:
        """The whole record as a dict, or None while there is none (``PENDING``).

        Parameters:
          timeout: Seconds Redis's answer is awaited at most; None (or infinity): as long as
            Redis may take (``PIPELINE_REDIS_SOCKET_TIMEOUT``).

        Raises:
          ResultBackendUnavailable: Redis failed, or did not answer in time.
          InvalidTimeout: ``timeout`` is not a number of seconds (also a ``ValueError``).
        """
        return self._store.read(self.id, timeout)

    @property
    def state(self) -> JobState:
        """Where the job stands; ``PENDING`` when no record exists (unknown id or expired)."""
        return self._store.state(self.id)

    status = state

    def ready(self) -> bool:
        """True once the job finished: ``SUCCESS``, ``FAILURE`` or ``REVOKED``."""
        return self.state in READY_STATES

    def successful(self) -> bool:
        """True if the job finished in ``SUCCESS``."""
        return self.state is JobState.SUCCESS

    def failed(self) -> bool:
        """True if the job finished in ``FAILURE``."""
        return self.state is JobState.FAILURE

    @property
    def result(self) -> Any:
        """The actor's return value once ``SUCCESS``; the error dict once ``FAILURE``; else None."""
        record = self.info()
        if record is None:
            return None
        if record["state"] == JobState.FAILURE.value:
            return record.get("error")
        return record.get("result")

    @property
    def error(self) -> JobError | None:
        """The last error (``type``, ``message``, ``traceback``) of a failed or retried job."""
        record = self.info()
        return None if record is None else record.get("error")

    @property
    def traceback(self) -> str | None:
        """The worker's traceback of the last error of a failed or retried job, as Celery's
        ``AsyncResult.traceback``; None without one.
        """
        error = self.error
        return None if error is None else error.get("traceback")

    @property
    def progress(self) -> Progress | None:
        """The last progress report (``done``, ``total``, ``phase``, ``updated_at``), if any."""
        record = self.info()
        return None if record is None else record.get("progress")

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the job to finish and return its result.

        Blocks on Redis, not a sleep loop: it returns as soon as the record is final.

        Parameters:
          timeout: Seconds to wait at most; None waits as long as it takes.
          propagate: Raise the job's error when it failed or was revoked; when False, return
            the error dict (or None for a revoked job) instead.

        Raises:
          JobTimeout: The job did not finish in time (also a ``TimeoutError``).
          InvalidTimeout: ``timeout`` is not a number of seconds (also a ``ValueError``).
          JobRevoked: The job was revoked.
          Exception: The worker's error, rebuilt with its type where that type is a builtin or
            one of pipeline's, else :class:`~pipeline.errors.JobFailed` carrying type and message.
        """
        record = self._store.wait(self.id, timeout)
        state = JobState(record["state"])
        if state is JobState.SUCCESS:
            return record.get("result")
        if not propagate:
            return record.get("error")
        if state is JobState.REVOKED:
            raise JobRevoked(f"job {self.id} was revoked")
        raise rebuild_error(record.get("error") or {"type": "Exception", "message": "the job failed"})

    def revoke(self) -> bool:
        """Cancel the job: a delayed job is dropped before its time, a worker skips it if it has
        not started, and a running job that checks (:func:`is_revoked`) stops. A finished job
        is left as it is.

        Returns:
          True if the record is now ``REVOKED`` by this call.
        """
        applied, _ = self._store.write(self.id, JobState.REVOKED, revoked_at=now_iso(), finished_at=now_iso())
        if applied:
            revocations.announce(self._store.redis, self.id)
            record = self._store.read(self.id)
            if record is not None and record.get("queue"):
                # A delayed job is dropped from its schedule: it is never published.
                Schedule(self._store.redis).remove(str(record["queue"]), [self.id])
        return applied

    def forget(self) -> bool:
        """Delete the job's record; afterwards the state reads ``PENDING``. True if one existed."""
        return self._store.delete(self.id)


def rebuild_error(error: JobError | Mapping[str, str]) -> BaseException:
    """The exception a failed record describes, for :meth:`AsyncResult.get` to raise.

    Only builtin and pipeline exception types are rebuilt (a record is data, and importing
    whatever module it names would run code); any other type becomes ``JobFailed``.
    """
    type_name = error.get("type", "Exception")
    message = error.get("message", "")
    traceback = error.get("traceback", "")
    module_name, _, class_name = type_name.rpartition(".")
    module_name = module_name or "builtins"
    if module_name.split(".")[0] in REBUILDABLE_MODULES:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            if isinstance(cls, type) and issubclass(cls, Exception):
                exc = cls(message)
                exc.remote_traceback = traceback  # type: ignore[attr-defined]
                return exc
        except Exception:  # noqa: BLE001 - any failure to rebuild falls back to JobFailed
            pass
    return JobFailed(type_name, message, traceback)

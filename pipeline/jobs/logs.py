"""Worker logs an operator can read, with no actor arguments in them.

Dramatiq writes a message into its log as ``actor(arguments...)``: mail context (a password
reset link is a bearer token) and addresses would land in every worker's log. The filter here
shows a message as its actor and job id only, makes an expected failure (bad input, a
revoked job) one WARNING line without a traceback, and drops Dramatiq's warning that a
returned value is discarded (pipeline's records keep every value).
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from pipeline.errors import JobStopped, PermanentError

#: The logger of Dramatiq's worker threads, which logs each failed or skipped message.
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"


class _Redacted:
    """A message as logs show it: its actor and job id."""

    def __init__(self, message: dramatiq.Message[Any] | MessageProxy) -> None:
        self.text = f"{message.actor_name}(job {message.message_id})"

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def redacted(value: object) -> object:
    """``value``, or a stand-in without arguments when it is a message."""
    if isinstance(value, dramatiq.Message | MessageProxy):
        return _Redacted(value)
    return value


class ReadableWorkerLogs(logging.Filter):
    """The filter of Dramatiq's worker-thread logger (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; False drops it."""
        if isinstance(record.msg, str) and "haven't added the Results middleware" in record.msg:
            return False
        if not isinstance(record.args, tuple):
            return True
        messages = [arg for arg in record.args if isinstance(arg, dramatiq.Message | MessageProxy)]
        exception = record.exc_info[1] if record.exc_info else None
        if messages and isinstance(exception, PermanentError | JobStopped):
            message = messages[0]
            stopped = isinstance(exception, JobStopped)
            record.msg = "Job %s (%s) %s: %s"
            record.args = (message.message_id, message.actor_name, "stopped" if stopped else "failed", exception)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO if stopped else logging.WARNING
            record.levelname = logging.getLevelName(record.levelno)
            return True
        record.args = tuple(redacted(arg) for arg in record.args)
        return True


def install() -> None:
    """Put the filter on Dramatiq's worker-thread logger (once per process)."""
    logger = logging.getLogger(WORKER_THREAD_LOGGER)
    if not any(isinstance(f, ReadableWorkerLogs) for f in logger.filters):
        logger.addFilter(ReadableWorkerLogs())

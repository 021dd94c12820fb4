"""Worker logs an operator can read, with no actor arguments in them.

Dramatiq writes a message into its log as ``actor(arguments...)``: mail context (a password
reset link is a bearer token) and addresses would land in every worker's log. The filter here
shows a message as its actor and job id only, makes an expected failure (bad input, a
revoked job) one WARNING line without a traceback, and drops Dramatiq's warning that a
returned value is discarded (pipeline's records keep every value).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from pipeline.errors import JobStopped, PermanentError
from pipeline.jobs.options import RATE_WAIT_OPTION
from pipeline.settings import mask_url
from pipeline.timestamps import iso_from_millis

#: The logger of Dramatiq's worker threads, which logs each failed or skipped message.
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"
#: The logger of Dramatiq's consumer thread of a queue, which logs a lost RabbitMQ connection.
CONSUMER_THREAD_LOGGER = "dramatiq.worker.ConsumerThread({queue})"
#: The logger of Dramatiq's RabbitMQ consumer, which logs a body it cannot decode.
RABBITMQ_CONSUMER_LOGGER = "dramatiq.brokers.rabbitmq._RabbitmqConsumer"


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
        if isinstance(record.msg, str) and DISCARDED_RESULT_WARNING in record.msg:
            return False
        if not isinstance(record.args, tuple):
            return True
        messages = [arg for arg in record.args if isinstance(arg, dramatiq.Message | MessageProxy)]
        if messages and RATE_WAIT_OPTION in messages[0].options and "skipped" in str(record.msg):
            # Not skipped: back in the schedule until the mail rate limit has a slot for it.
            message = messages[0]
            record.msg = "Job %s (%s) waits for the mail rate limit until %s"
            record.args = (message.message_id, message.actor_name, iso_from_millis(message.options[RATE_WAIT_OPTION]))
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
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


class NamedBroker(logging.Filter):
    """The filter of Dramatiq's consumer logger: a connection error names the (masked) broker URL,
    which Dramatiq's own line leaves out.

    Parameters:
      url: The broker URL, password masked.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the URL to a connection error's line."""
        if isinstance(record.msg, str) and "connection error" in record.msg and self.url not in record.msg:
            # The message is a format string: a URL's own "%" (as in /%2F) must not read as one.
            record.msg = f"{record.msg} (RabbitMQ at {self.url.replace('%', '%%')})"
        return True


class UndecodableBodies(logging.Filter):
    """The filter of Dramatiq's RabbitMQ consumer logger: drops its traceback of a body it cannot
    decode, which :class:`~pipeline.jobs.finished.FinishedCheck` reports in one line instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the decode failure's line."""
        return not (isinstance(record.msg, str) and record.msg.startswith("Failed to decode message"))


#: The start of Dramatiq's warning, once per job that returns a value, that the value is discarded.
DISCARDED_RESULT_WARNING = "haven't added the Results middleware"


class _WorkerThreadLogger(logging.LoggerAdapter[logging.Logger]):
    """A worker thread's logger that drops, before any record is made, Dramatiq's warning that
    a returned value is discarded: made for every job, that record cost more than the job's
    own bookkeeping (the filter alone would still pay for it).
    """

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log a warning, unless it is the discarded-value one."""
        if isinstance(msg, str) and DISCARDED_RESULT_WARNING in msg:
            return
        # The record names Dramatiq's line that logged it, not this one.
        self.logger.warning(msg, *args, stacklevel=2, **kwargs)


def _add_once(logger: logging.Logger, new: logging.Filter) -> None:
    if not any(type(f) is type(new) for f in logger.filters):
        logger.addFilter(new)


class WorkerLogs(Middleware):
    """Puts the filters on Dramatiq's loggers: the worker threads' when the broker is built, each
    queue's consumer's when a worker boots.

    Parameters:
      broker_url: The broker URL (masked where it is shown), or what gives it when first needed.
    """

    def __init__(self, broker_url: str | Callable[[], str]) -> None:
        self._url = broker_url
        _add_once(logging.getLogger(WORKER_THREAD_LOGGER), ReadableWorkerLogs())
        _add_once(logging.getLogger(RABBITMQ_CONSUMER_LOGGER), UndecodableBodies())

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Name the broker in each consumer's connection errors; spare the worker threads the
        discarded-value warning.
        """
        for thread in worker.workers:
            if not isinstance(thread.logger, _WorkerThreadLogger):
                thread.logger = _WorkerThreadLogger(thread.logger, {})
        for queue in worker.consumers:
            _add_once(logging.getLogger(CONSUMER_THREAD_LOGGER.format(queue=queue)), NamedBroker(self.url))

    @property
    def url(self) -> str:
        """The broker URL, password masked."""
        return mask_url(self._url() if callable(self._url) else self._url)

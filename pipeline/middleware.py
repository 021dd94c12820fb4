"""The Dramatiq middleware pipeline adds to a broker.

- :class:`MessagePriorities` turns a message's priority into RabbitMQ's and checks it.
- :class:`JobRecords` keeps each message's job record (see :mod:`pipeline.records`).
- :class:`PipelineRetries` is Dramatiq's ``Retries`` that never retries a permanent error.

``JobRecords`` must stand before ``PipelineRetries`` in the broker's list: Dramatiq runs
``after_*`` hooks in reverse order, so the record is written once the retry decision is made.
"""

from __future__ import annotations

import functools
import threading
import traceback
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, Retries, SkipMessage

from pipeline.errors import InvalidMessage, InvalidPriority, JobRevoked, PermanentError
from pipeline.records import RecordStore, iso_from_millis, now_iso
from pipeline.revocations import RevocationWatcher
from pipeline.settings import Settings
from pipeline.starts import DelayedStarts
from pipeline.states import JobState

#: Message option a sender sets for the AMQP priority (higher is sooner).
PRIORITY_OPTION = "priority"
#: Actor option giving an actor's default AMQP priority; also Dramatiq's message option.
BROKER_PRIORITY_OPTION = "broker_priority"
#: Actor option naming a function that checks a message's arguments at send time.
CHECK_OPTION = "check"
#: Actor option giving the AMQP priority of messages sent with ``send_many``.
BULK_PRIORITY_OPTION = "bulk_priority"


def _is_retry(message: dramatiq.Message) -> bool:
    """True for a message the Retries middleware is sending again."""
    return bool(message.options.get("retries"))


def error_fields(exception: BaseException) -> dict[str, str]:
    """The ``error`` of a record: the exception's qualified type, message and traceback."""
    cls = type(exception)
    module = "" if cls.__module__ == "builtins" else cls.__module__ + "."
    return {
        "type": module + cls.__qualname__,
        "message": str(exception),
        "traceback": "".join(traceback.format_exception(exception, limit=30)),
    }


class MessagePriorities(Middleware):
    """Gives every message its AMQP priority and refuses one its queue cannot hold.

    A sender passes ``priority=N`` (or Dramatiq's ``broker_priority=N``); otherwise the actor's
    ``broker_priority`` option applies (a number, or a function of the message's keyword
    arguments, e.g. to rank mails by template), else 0. Higher numbers are delivered sooner when a
    queue has a backlog.

    Parameters:
      settings: Gives each queue's ``x-max-priority``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def actor_options(self) -> set[str]:
        """Declares ``broker_priority`` (a number, or a function of the message's keyword
        arguments) and ``bulk_priority`` (the default of ``send_many``).
        """
        return {BROKER_PRIORITY_OPTION, BULK_PRIORITY_OPTION}

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        """Check the actor's default priorities fit its queue when the actor is declared."""
        for option in (BROKER_PRIORITY_OPTION, BULK_PRIORITY_OPTION):
            default = actor.options.get(option)
            if default is not None and not callable(default):
                self._check(actor.queue_name, default, f"actor {actor.actor_name!r}")

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Set ``broker_priority`` from the sender's ``priority`` or the actor's default."""
        options = message.options
        if PRIORITY_OPTION in options:
            options[BROKER_PRIORITY_OPTION] = options.pop(PRIORITY_OPTION)
        if options.get(BROKER_PRIORITY_OPTION) is None:
            default = broker.get_actor(message.actor_name).options.get(BROKER_PRIORITY_OPTION, 0)
            options[BROKER_PRIORITY_OPTION] = default(message.kwargs) if callable(default) else default
        self._check(q_name(message.queue_name), options[BROKER_PRIORITY_OPTION], f"message {message.message_id}")

    def _check(self, queue_name: str, priority: Any, owner: str) -> None:
        highest = self.settings.max_priority(queue_name)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= highest:
            raise InvalidPriority(
                f"{owner}: priority {priority!r} is outside 0..{highest}, the range queue "
                f"{queue_name!r} is declared with (PIPELINE_QUEUE_PRIORITIES)"
            )


class MessageChecks(Middleware):
    """Runs an actor's ``check`` on a message's arguments before it is sent.

    ``@actor(check=function)`` makes ``send()`` call ``function(**kwargs)`` first; what it
    raises reaches the sender and nothing is queued, so bad input fails at once, in the
    caller, rather than later in a worker.
    """

    @property
    def actor_options(self) -> set[str]:
        """Declares ``check``."""
        return {CHECK_OPTION}

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Check a newly sent message (retries were checked when first sent)."""
        if _is_retry(message):
            return
        check = broker.get_actor(message.actor_name).options.get(CHECK_OPTION)
        if check is None:
            return
        try:
            check(*message.args, **message.kwargs)
        except PermanentError as exc:
            raise InvalidMessage(f"{message.actor_name}: {exc}") from exc


class JobRecords(Middleware):
    """Writes each message's job record through its life.

    ``QUEUED`` once RabbitMQ has taken the message (written by the sender), ``STARTED`` with
    the attempt number, ``RETRY`` with the error and when the next attempt is due, then
    ``SUCCESS`` with the return value or ``FAILURE`` with the error. A message whose record is
    already finished (revoked before it ran, or redelivered after it succeeded) is skipped.

    Parameters:
      store: Where the records go.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.watcher = RevocationWatcher(store.client, store.settings.result_ttl)
        self.starts = DelayedStarts(store, store.settings.started_after / 1000)
        self._local = threading.local()

    @staticmethod
    def _describe(message: dramatiq.Message) -> dict[str, Any]:
        """The fields that say what a job is. Both the sender and the worker write them, since
        a fast worker's ``STARTED`` can land before the sender's ``QUEUED``, which then yields.
        """
        fields = {
            "message_id": message.message_id,
            "actor": message.actor_name,
            "queue": q_name(message.queue_name),
            "priority": message.options.get(BROKER_PRIORITY_OPTION, 0),
            "enqueued_at": iso_from_millis(message.message_timestamp),
        }
        if "eta" in message.options and not _is_retry(message):
            fields["eta"] = iso_from_millis(message.options["eta"])
        return fields

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Send a new message's ``QUEUED`` record to Redis, to be confirmed in ``after_enqueue``.

        The answer is read after RabbitMQ's publisher confirm, so the record costs no waiting of
        its own. For a retry, remember when it is due, for the ``RETRY`` record.
        """
        if _is_retry(message):
            self._local.retry_eta = message.options.get("eta")
            return
        self._drop_pending()
        self._local.pending = self.store.begin_write(message.message_id, JobState.QUEUED, **self._describe(message))

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Read the answer to the ``QUEUED`` write sent before publishing."""
        pending = getattr(self._local, "pending", None)
        if pending is not None and not _is_retry(message):
            self._local.pending = None
            pending.result()

    def after_enqueue_failure(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        """RabbitMQ did not take the message: take back its ``QUEUED`` record."""
        self._drop_pending()
        if self.store.state(message.message_id) is JobState.QUEUED:
            self.store.delete(message.message_id)

    def _drop_pending(self) -> None:
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            self._local.pending = None
            pending.cancel()

    def before_enqueue_batch(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message]) -> None:
        """Nothing to do before a batch: its records are written once RabbitMQ committed it."""

    def after_enqueue_batch(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message]) -> None:
        """Record a batch of newly sent messages as ``QUEUED`` in one Redis round trip."""
        self.store.write_queued(self._describe(m) for m in messages)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Start watching revocations, so that checking one costs no Redis read, and the
        thread that writes the starts of jobs that run longer than a moment.
        """
        self.watcher.start()
        if self.starts.delay > 0:
            self.starts.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Stop watching revocations; write the starts still pending."""
        self.watcher.stop()
        self.starts.stop()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Record ``STARTED``, or skip the message when it was revoked or already finished.

        A first delivery's record is checked in memory (the revocation watcher) and its
        ``STARTED`` write is left to :class:`~pipeline.starts.DelayedStarts`, or sent without
        waiting when starts are written at once. A redelivery (a worker died holding it, perhaps
        after it finished) and any message while the watcher is down wait for the write's
        answer, which says whether the record was already final.
        """
        attempt = message.options.get("retries", 0) + 1
        fields = {"started_at": now_iso(), **self._describe(message)}
        if self.watcher.running and not getattr(message, "redelivered", True):
            if message.message_id in self.watcher:
                raise SkipMessage(f"job {message.message_id} was revoked")
            if self.starts.running:
                self.starts.add(message.message_id, attempt, fields)
            else:
                self.store.begin_write(message.message_id, JobState.STARTED, attempt=attempt, **fields)
            return
        _, state = self.store.write(message.message_id, JobState.STARTED, attempt=attempt, **fields)
        if state.ready:
            raise SkipMessage(f"job {message.message_id} is already {state}")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Record ``SUCCESS``, ``RETRY`` or ``FAILURE`` from the outcome and the retry decision."""
        attempt = message.options.get("retries", 0)
        retry_eta = getattr(self._local, "retry_eta", None)
        self._local.retry_eta = None
        # A start not written yet goes with the final write: one write for a quick job.
        started_attempt, started = self.starts.take(message.message_id)
        if isinstance(exception, JobRevoked):
            return
        # The final write's answer is read with the thread's next write: the record is in
        # Redis's hands as soon as it is sent, and the worker need not wait a round trip.
        final = functools.partial(self.store.begin_write, message.message_id, finished_at=now_iso(), **started)
        if exception is None and not message.failed:
            try:
                final(JobState.SUCCESS, attempt=started_attempt, result=result)
            except TypeError as exc:
                message.fail()
                error = {"type": "TypeError", "message": f"the result is not JSON-safe: {exc}", "traceback": ""}
                final(JobState.FAILURE, attempt=started_attempt, error=error)
            return
        error = (
            error_fields(exception)
            if exception is not None
            else {"type": "pipeline.errors.PermanentError", "message": "failed by a middleware before it ran"}
        )
        if message.failed:
            final(JobState.FAILURE, attempt=started_attempt, error=error)
        else:
            due = iso_from_millis(retry_eta) if retry_eta else None
            self.store.begin_write(
                message.message_id, JobState.RETRY, attempt=attempt, error=error, next_attempt_at=due, **started
            )

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: object) -> None:
        """Read the answers the thread's last writes still wait for."""
        self.store.settle_thread()


class PipelineRetries(Retries):
    """Dramatiq's ``Retries``, except that a :class:`~pipeline.errors.PermanentError` is failed
    at once (and so dead-lettered) and a :class:`~pipeline.errors.JobRevoked` is dropped
    (acknowledged, neither retried nor dead-lettered).
    """

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Decide between retrying, failing and dropping a message whose actor raised."""
        if isinstance(exception, JobRevoked):
            return
        if isinstance(exception, PermanentError):
            self.logger.info("Failing message %r: %s", message.message_id, exception)
            message.fail()
            return
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except Exception:
            # The retry could not be sent: dead-letter the message rather than ack and lose it.
            self.logger.exception("Could not schedule a retry of message %r.", message.message_id)
            message.fail()

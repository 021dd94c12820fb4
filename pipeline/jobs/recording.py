"""The middleware that keeps each job's record through its life.

It must stand before :class:`~pipeline.jobs.retries.PipelineRetries` in the broker's list:
Dramatiq runs ``after_*`` hooks in reverse order, so the record is written once the retry
decision is made.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, SkipMessage

from pipeline.errors import JobRevoked
from pipeline.job_record import JobError, error_info
from pipeline.jobs.checks import is_retry
from pipeline.jobs.current import set_current_message_id
from pipeline.jobs.options import BROKER_PRIORITY_OPTION, ETA_OPTION, RETRIES_OPTION
from pipeline.jobs.starts import DelayedStarts
from pipeline.states import JobState
from pipeline.store.records import RecordStore
from pipeline.store.revocations import RevocationWatcher
from pipeline.timestamps import iso_from_millis, now_iso


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
        self.watcher = RevocationWatcher(store.redis)
        self.starts = DelayedStarts(store, store.settings.started_after / 1000)
        self._local = threading.local()

    @staticmethod
    def _describe(message: dramatiq.Message[Any] | MessageProxy) -> dict[str, Any]:
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
        if ETA_OPTION in message.options and not is_retry(message):
            fields["eta"] = iso_from_millis(message.options[ETA_OPTION])
        return fields

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Send a new message's ``QUEUED`` record to Redis, to be confirmed in ``after_enqueue``.

        The answer is read after RabbitMQ's publisher confirm, so the record costs no waiting of
        its own. For a retry, remember when it is due, for the ``RETRY`` record.
        """
        if is_retry(message):
            self._local.retry_eta = message.options.get(ETA_OPTION)
            return
        self._drop_pending()
        self._local.pending = self.store.begin_write(message.message_id, JobState.QUEUED, **self._describe(message))

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Read the answer to the ``QUEUED`` write sent before publishing."""
        pending = getattr(self._local, "pending", None)
        if pending is not None and not is_retry(message):
            self._local.pending = None
            pending.result()

    def after_enqueue_failure(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        """RabbitMQ did not take the message: take back its ``QUEUED`` record."""
        self._drop_pending()
        if self.store.state(message.message_id) is JobState.QUEUED:
            self.store.delete(message.message_id)

    def _drop_pending(self) -> None:
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            self._local.pending = None
            pending.cancel()

    def before_enqueue_batch(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Nothing to do before a batch: its records are written once RabbitMQ committed it."""

    def after_enqueue_batch(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> None:
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
        ``STARTED`` write is left to :class:`~pipeline.jobs.starts.DelayedStarts`, or sent without
        waiting when starts are written at once. A redelivery (a worker died holding it, perhaps
        after it finished) and any message while the watcher is down wait for the write's
        answer, which says whether the record was already final.
        """
        attempt = message.options.get(RETRIES_OPTION, 0) + 1
        set_current_message_id(message.message_id)
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
        set_current_message_id(None)
        attempt = message.options.get(RETRIES_OPTION, 0)
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
                not_json: JobError = {"type": "TypeError", "message": f"the result is not JSON-safe: {exc}"}
                final(JobState.FAILURE, attempt=started_attempt, error=not_json)
            return
        error: JobError = (
            error_info(exception)
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

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """The thread runs no job any more."""
        set_current_message_id(None)

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: object) -> None:
        """Read the answers the thread's last writes still wait for."""
        self.store.settle_thread()

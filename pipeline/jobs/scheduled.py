"""The worker's part in delayed messages: publish its queues' messages as they fall due.

Every worker process runs one thread that looks, a few times a second, for the messages of the
queues it consumes that are due (see :mod:`pipeline.store.schedule`), publishes them to their
queue in one AMQP transaction per batch and removes them from Redis. Several workers share the
work: a take leases what it took, so two never publish the same message while both run. A
publish that fails gives the messages back, due at their own times.

A delayed message that reached a queue's ``.DQ`` instead (sent while Redis was away, or by
another service as Dramatiq sends one), or the queue itself with its due time (``eta``, which
Dramatiq holds any delivery for), is moved into the schedule as it is delivered, unless it is
due within a second: a worker does not hold it until its time, which RabbitMQ's
``consumer_timeout`` would cut short, delivering it again, and again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
from dramatiq.common import current_millis, q_name
from dramatiq.errors import DecodeError
from dramatiq.middleware import Middleware

from pipeline.background import Background
from pipeline.errors import PipelineError, ResultBackendUnavailable
from pipeline.jobs.checks import is_number, malformed
from pipeline.jobs.consumers import WrappedConsumer
from pipeline.jobs.finished import ReceivedStates, refuse_malformed
from pipeline.jobs.options import ETA_OPTION
from pipeline.store.records import RecordStore
from pipeline.store.schedule import Schedule, Taken

logger = logging.getLogger(__name__)

#: Messages taken and published at most in one batch.
MOST_PER_TAKE = 500
#: Seconds between two looks when nothing is due sooner: a message runs this late at most.
LOOK_EVERY = 0.2
#: Milliseconds: a delivery due later than this goes to the schedule.
HOLD_AT_MOST = 1_000


class DelayedToSchedule(WrappedConsumer):
    """A consumer that moves each delivery due later than :data:`HOLD_AT_MOST` (its ``eta``)
    into the schedule, then acknowledges it; while Redis does not take it, the worker holds it
    until its time, as Dramatiq does. On a delay queue (``.DQ``) it also dead-letters a delivery
    no middleware could use (an ``eta`` past the year 9999, say), its record saying why; a
    queue's own consumer (:class:`~pipeline.jobs.finished.FinishedCheck`) has refused those.

    Parameters:
      inner: The queue's consumer.
      schedule: Where delayed messages wait for their time.
      store: The records, for a refused delivery's failure.
      received: The states the inner consumer asked about, when it asks (a queue's own): a
        delivery moved away is not asked about any more.
    """

    def __init__(
        self, inner: Any, schedule: Schedule, store: RecordStore, received: ReceivedStates | None = None
    ) -> None:
        super().__init__(inner)
        self.schedule = schedule
        self.store = store
        self.received = received

    def __next__(self) -> Any:
        """The next delivery the worker holds until its time, or None (none came, or it was
        moved to the schedule, or refused).
        """
        message = next(self.inner)
        if message is None:
            return None
        if self.received is None:
            # A delay queue's delivery: no consumer beneath looked at it.
            problem = malformed(message, self.inner.queue_name)
            if problem is not None:
                refuse_malformed(self.inner, self.store, message, problem)
                return None
        due = message.options.get(ETA_OPTION)
        if not is_number(due) or due - current_millis() <= HOLD_AT_MOST:
            return message
        queue_name = q_name(message.queue_name)
        kept = message.copy(queue_name=queue_name)
        del kept.options[ETA_OPTION]
        try:
            self.schedule.add(queue_name, message.message_id, int(due), kept.encode().decode())
        except ResultBackendUnavailable:
            return message
        self.inner.ack(message)
        if self.received is not None:
            self.received.forget(message.message_id)
        return None


class ScheduledPublisher(Middleware):
    """Publishes the delayed messages of the queues a worker consumes once they are due."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self._thread: Background | None = None
        self._failing = False

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Start publishing the due messages of the worker's queues."""
        self.queues = sorted({q_name(name) for name in worker.consumers})
        self._thread = Background("pipeline-scheduled", lambda stop: self._run(broker, stop))
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Stop publishing: another worker (or this one, started again) takes over."""
        if self._thread is not None:
            self._thread.stop(wait=5)

    def _run(self, broker: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            pause = LOOK_EVERY
            for queue_name in self.queues:
                try:
                    pause = min(pause, self.publish_due(broker, queue_name))
                    self._failing = False
                except PipelineError as exc:
                    if not self._failing:
                        logger.warning("Delayed messages of %s wait: %s", queue_name, exc)
                    self._failing = True
            stop.wait(pause)

    def publish_due(self, broker: Any, queue_name: str) -> float:
        """Publish ``queue_name``'s due messages; the seconds to wait before looking again.

        Raises:
          ResultBackendUnavailable: Redis failed.
          BrokerUnavailable: RabbitMQ did not take the batch (it is given back first).
        """
        now = current_millis()
        found = broker.schedule.take_due(queue_name, now, MOST_PER_TAKE)
        if not found.taken:
            if found.next_due is None:
                return LOOK_EVERY
            return max(0.0, min(LOOK_EVERY, (found.next_due - now) / 1000))
        messages: list[dramatiq.Message[Any]] = []
        published: list[Taken] = []
        done: list[str] = []
        for taken in found.taken:
            done.append(taken.message_id)
            if not taken.body:
                continue  # cancelled (revoked) while it waited
            try:
                messages.append(dramatiq.Message.decode(taken.body.encode()))
                published.append(taken)
            except DecodeError:
                logger.error("Delayed message %s cannot be decoded; dropped: %r", taken.message_id, taken.body[:200])
        if messages:
            try:
                broker.enqueue_many(messages)
            except PipelineError:
                broker.schedule.release(queue_name, found, published)
                raise
        broker.schedule.forget_taken(queue_name, found, done)
        return 0.0 if len(found.taken) == MOST_PER_TAKE else LOOK_EVERY

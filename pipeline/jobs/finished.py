"""Deliveries of jobs that already finished, asked about a batch at a time, without waiting.

Another service may publish a message again, with the id of a job that ran. Asking Redis, for
each delivery, whether its job finished would cost a round trip per job before it runs; instead
the consumer hands a state read per delivery to the store's writer as it receives them, without
waiting for the answers, and notes each future in :class:`ReceivedStates`, an object it shares
with the job-records middleware: the worker thread that takes a delivery reads its answer there,
and the middleware skips a job that finished.

It also records the failure of a body Dramatiq cannot decode, which it dead-letters: such a
body has no message id of its own, but the AMQP ``message_id`` property pipeline publishes
with names its job.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.errors import DecodeError

from pipeline.errors import ResultBackendUnavailable, UndecodableMessage, shown
from pipeline.job_id import is_job_id
from pipeline.job_record import error_info
from pipeline.jobs.checks import callback_problem, malformed
from pipeline.jobs.consumers import WrappedConsumer
from pipeline.jobs.holds import RunLimit
from pipeline.states import JobState
from pipeline.store.records import RecordStore
from pipeline.store.writer import Answer, When
from pipeline.timestamps import now_iso

logger = logging.getLogger(__name__)

#: Deliveries asked about in one round trip at most.
MAX_BATCH = 256
#: States asked about and not taken yet that are remembered at most (deliveries a middleware
#: skipped before their state was taken are forgotten, oldest first, past it).
MAX_ASKED = 10_000


class ReceivedStates:
    """The state each delivery's job had when the consumer received it, asked without waiting.

    The consumer (:class:`FinishedCheck`) asks; the job-records middleware takes the answer
    when the delivery's job is about to run. Shared by both as an explicit object, so neither
    leaves anything on the message for the other.

    Parameters:
      store: The job records.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._asked: dict[str, Answer[JobState]] = {}
        self._lock = threading.Lock()

    def ask(self, message_ids: list[str]) -> None:
        """Ask the state of each job without waiting."""
        # One delivery (an idle worker's): its read goes ahead, and its answer comes while a
        # worker thread takes the delivery. Several: handed in together, then sent by this
        # thread in one round trip (or with the batch of the thread sending).
        when = When.AHEAD if len(message_ids) == 1 else When.LATER
        futures = [(message_id, self.store.state_soon(message_id, when)) for message_id in message_ids]
        self.store.writer.send_waiting()
        with self._lock:
            self._asked.update(futures)
            while len(self._asked) > MAX_ASKED:
                del self._asked[next(iter(self._asked))]

    def take(self, message_id: str) -> JobState | None:
        """The state ``message_id``'s job had when received; None when it was not asked.

        ``PENDING`` also when Redis failed to say: the job then runs, as it would without a record.
        """
        with self._lock:
            future = self._asked.pop(message_id, None)
        if future is None:
            return None
        try:
            return self.store.answer(future)
        except ResultBackendUnavailable as exc:
            logger.debug("Job %s was not checked for a finished run: %s", message_id, exc)
            return JobState.PENDING

    def forget(self, message_id: str) -> None:
        """Drop the question about a delivery that will not run (skipped before it started)."""
        with self._lock:
            self._asked.pop(message_id, None)


class FinishedCheck(WrappedConsumer):
    """A consumer that asks each delivery's job's state as it receives it, without waiting.

    Parameters:
      inner: Dramatiq's consumer of the queue.
      received: Where the questions are noted, for the job-records middleware.
      actors: The actors the worker declares, which a delivery's callbacks must name.
      limit: How long the queue's jobs may run, which a delivery must not raise.
    """

    def __init__(
        self,
        inner: Any,
        received: ReceivedStates,
        actors: Mapping[str, dramatiq.Actor[Any, Any]],
        limit: RunLimit,
    ) -> None:
        super().__init__(inner)
        self.received = received
        self.actors = actors
        self.limit = limit
        self.store = received.store
        self._ready: collections.deque[Any] = collections.deque()
        self._deliveries = inner.iterator = _Deliveries(inner.iterator)

    def __next__(self) -> Any:
        """The next delivery (or None when none came within the consumer's timeout)."""
        if self._ready:
            return self._ready.popleft()
        first = self._next_decoded()
        if first is None:
            return None
        batch = [first]
        # What pika has already received can be read without waiting.
        waiting = min(self.inner.channel.get_waiting_message_count(), MAX_BATCH - 1)
        for _ in range(waiting):
            message = self._next_decoded()
            if message is None:
                break
            batch.append(message)
        self._mark(batch)
        self._ready.extend(batch[1:])
        return first

    def pop_ready(self) -> Any:
        """A delivery received and not handed out yet, or None: what a worker going quiet still
        hands to its threads (to hand back) once it takes no more.
        """
        return self._ready.popleft() if self._ready else None

    def _next_decoded(self) -> Any:
        """Dramatiq's next delivery, recording the failure of one it could not decode."""
        self._deliveries.last = None
        message = next(self.inner)
        if message is None and self._deliveries.last is not None:
            method, properties, body = self._deliveries.last
            if method is not None:
                self._record_undecodable(properties, body)
        if message is not None:
            problem = (
                malformed(message, self.inner.queue_name)
                or callback_problem(self.actors, message, worker=True)
                or self.limit.problem(message.options, message.actor_name, self.actors.get(message.actor_name))
            )
            if problem is not None:
                refuse_malformed(self.inner, self.store, message, problem)
                return None
        return message

    def _record_undecodable(self, properties: Any, body: bytes) -> None:
        message_id = properties.message_id
        try:
            dramatiq.Message.decode(body)
        except DecodeError as exc:
            reason = str(exc.__cause__ or exc)
        else:  # pragma: no cover - Dramatiq failed it for another reason
            reason = "Dramatiq could not decode it"
        if not is_job_id(message_id):
            logger.warning(
                "A body on queue %r that is not a valid message was dead-lettered (message_id property %s, "
                "no job id): %s",
                self.inner.queue_name,
                shown(message_id),
                reason,
            )
            return
        error = UndecodableMessage(f"the body of message {message_id} is not a valid message: {reason}; dead-lettered")
        logger.warning("Job %s failed: %s", message_id, error)
        fail_unrun(self.store, self.inner.queue_name, message_id, properties.type, error)

    def _mark(self, batch: list[Any]) -> None:
        # Asked without waiting: each answer is read by the worker thread that takes the
        # delivery. Redis failing to answer leaves it unknown, and the job runs (a worker never
        # stops for Redis), as if it had no record.
        self.received.ask([message.message_id for message in batch if is_job_id(message.message_id)])

    def requeue(self, messages: Any) -> None:
        """Dramatiq's requeue, of the messages handed out and of those still held here."""
        held, self._ready = list(self._ready), collections.deque()
        self.inner.requeue([*messages, *held])


class _Deliveries:
    """pika's iterator of ``(method, properties, body)`` deliveries, keeping the last one."""

    def __init__(self, iterator: Any) -> None:
        self.iterator = iterator
        self.last: Any = None

    def __iter__(self) -> _Deliveries:
        return self

    def __next__(self) -> Any:
        self.last = next(self.iterator)
        return self.last


def refuse_malformed(consumer: Any, store: RecordStore, message: Any, problem: str) -> None:
    """Dead-letter a decoded delivery of ``consumer`` whose fields no middleware can use (see
    :func:`~pipeline.jobs.checks.malformed`), recording why.
    """
    message_id = message.message_id
    error = UndecodableMessage(f"message {shown(message_id)} cannot run: {problem}; dead-lettered")
    logger.warning("A message on queue %r was dead-lettered: %s", consumer.queue_name, error)
    if is_job_id(message_id):
        fail_unrun(store, consumer.queue_name, message_id, message.actor_name, error)
    consumer.nack(message)


def fail_unrun(store: RecordStore, queue_name: str, message_id: str, actor: object, error: UndecodableMessage) -> None:
    """Record ``FAILURE`` at attempt 1 for a delivery dead-lettered before it could run."""
    fields: dict[str, Any] = {"queue": q_name(queue_name), "finished_at": now_iso()}
    if isinstance(actor, str):
        fields["actor"] = actor
    error_record = error_info(error)
    error_record.pop("traceback", None)
    store.begin_write(message_id, JobState.FAILURE, attempt=1, keep=True, error=error_record, **fields)


def checks_finished(queue_name: str) -> bool:
    """Whether deliveries of ``queue_name`` are checked: not those of a delay queue (retries)."""
    return queue_name == q_name(queue_name)

"""Deliveries of jobs that already finished, asked about a batch at a time, without waiting.

Another service may publish a message again, with the id of a job that ran. Asking Redis, for
each delivery, whether its job finished would cost a round trip per job; instead the consumer
reads every delivery already at hand and sends one read per delivery at once, without waiting
for the answers (see :mod:`pipeline.store.state_line`): the worker thread that takes a delivery
reads its answer, and the job-records middleware skips a job that finished.

It also records the failure of a body Dramatiq cannot decode, which it dead-letters: such a
body has no message id of its own, but the AMQP ``message_id`` property pipeline publishes
with names its job.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.errors import DecodeError

from pipeline.errors import UndecodableMessage, shown
from pipeline.job_id import is_job_id
from pipeline.job_record import error_info
from pipeline.states import JobState
from pipeline.store.records import RecordStore
from pipeline.store.state_line import StateLine
from pipeline.timestamps import now_iso

logger = logging.getLogger(__name__)

#: Attribute a delivery gets: the state of its job when the consumer received it.
STATE_ATTRIBUTE = "pipeline_state"
#: Deliveries asked about in one round trip at most.
MAX_BATCH = 256


def state_when_received(message: Any) -> JobState | None:
    """The state a delivery's job had when it was received; None when it was not asked."""
    answer = getattr(message, STATE_ATTRIBUTE, None)
    return answer.state() if answer is not None else None


class FinishedCheck(dramatiq.Consumer):
    """A consumer that marks each delivery with its job's state, a batch per round trip.

    Parameters:
      inner: Dramatiq's consumer of the queue.
      store: The job records.
    """

    def __init__(self, inner: Any, store: RecordStore) -> None:
        self.inner = inner
        self.store = store
        self.states = StateLine(store.redis)
        self._ready: collections.deque[Any] = collections.deque()
        self._deliveries = inner.iterator = _Deliveries(inner.iterator)

    def __iter__(self) -> FinishedCheck:
        return self

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

    def _next_decoded(self) -> Any:
        """Dramatiq's next delivery, recording the failure of one it could not decode."""
        self._deliveries.last = None
        message = next(self.inner)
        if message is None and self._deliveries.last is not None:
            method, properties, body = self._deliveries.last
            if method is not None:
                self._record_undecodable(properties, body)
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
        fields: dict[str, Any] = {"queue": q_name(self.inner.queue_name), "finished_at": now_iso()}
        if isinstance(properties.type, str):
            fields["actor"] = properties.type
        error_record = error_info(error)
        error_record.pop("traceback", None)
        self.store.begin_write(message_id, JobState.FAILURE, attempt=1, keep=True, error=error_record, **fields)
        self.store.settle_thread()

    def _mark(self, batch: list[Any]) -> None:
        # Asked without waiting: each answer is read by the worker thread that takes the
        # delivery. Redis failing to answer leaves it unknown, and the job runs (a worker never
        # stops for Redis), as if it had no record.
        asked = [message for message in batch if is_job_id(message.message_id)]
        answers = self.states.ask([message.message_id for message in asked])
        for message, answer in zip(asked, answers, strict=True):
            setattr(message, STATE_ATTRIBUTE, answer)

    def ack(self, message: Any) -> None:
        """Dramatiq's ack."""
        self.inner.ack(message)

    def nack(self, message: Any) -> None:
        """Dramatiq's nack (dead-letters the message)."""
        self.inner.nack(message)

    def requeue(self, messages: Any) -> None:
        """Dramatiq's requeue, of the messages handed out and of those still held here."""
        held, self._ready = list(self._ready), collections.deque()
        self.inner.requeue([*messages, *held])

    def close(self) -> None:
        """Close Dramatiq's consumer."""
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


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


def checks_finished(queue_name: str) -> bool:
    """Whether deliveries of ``queue_name`` are checked: not those of a delay queue (retries)."""
    return queue_name == q_name(queue_name)

"""State reads sent by one thread and collected by others: a consumer asks Redis about a batch of
deliveries without waiting, and each worker thread reads its delivery's answer when it takes it.

The consumer thread is what keeps a worker's threads fed: waiting there for Redis, once per
batch, left the threads idle for a round trip each time. Here the consumer only sends; by the
time a worker thread takes a delivery its answer has long arrived, and reading it costs no wait.
Answers come back in the order the reads went out, so they are collected in that order, under
one lock, whichever thread asks first.
"""

from __future__ import annotations

import collections
import json
import logging
import threading

import redis

from pipeline.states import JobState
from pipeline.store.connection import RedisConnection

logger = logging.getLogger(__name__)


class StateAnswer:
    """The answer to one state read; :meth:`state` waits for it if it has not been read yet."""

    def __init__(self, line: StateLine) -> None:
        self._line = line
        self._state: JobState | None = None

    def settle(self, state: JobState) -> None:
        """Record the answer."""
        self._state = state

    @property
    def settled(self) -> bool:
        """Whether the answer is in."""
        return self._state is not None

    def state(self) -> JobState:
        """The record's state when it was asked; ``PENDING`` also when Redis failed to say (the
        job then runs, as it would without a record).
        """
        if self._state is None:
            self._line.collect(self)
        return self._state or JobState.PENDING


class StateLine:
    """A connection of its own for state reads, sent by one thread and collected by any.

    Parameters:
      redis: The Redis of the records (its client gives the connection's options).
    """

    def __init__(self, redis_connection: RedisConnection) -> None:
        self.redis = redis_connection
        self._lock = threading.Lock()
        self._connection: redis.Connection | None = None
        self._waiting: collections.deque[StateAnswer] = collections.deque()

    def ask(self, message_ids: list[str]) -> list[StateAnswer]:
        """Send a state read for each job, without waiting; their answers, in order."""
        answers = [StateAnswer(self) for _ in message_ids]
        commands = [("HGET", self.redis.keys.record(message_id), "state") for message_id in message_ids]
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self.redis.new_connection()
                    self._connection.connect()
                self._connection.send_packed_command(self._connection.pack_commands(commands))
                self._waiting.extend(answers)
            except redis.RedisError as exc:
                self._give_up(exc)
                for answer in answers:
                    answer.settle(JobState.PENDING)
        return answers

    def collect(self, answer: StateAnswer) -> None:
        """Read answers in order until ``answer``'s is in."""
        with self._lock:
            while not answer.settled and self._waiting and self._connection is not None:
                try:
                    reply = self._connection.read_response()
                except redis.ResponseError:
                    reply = None  # an error reply is this read's answer, consumed: unknown
                except redis.RedisError as exc:
                    self._give_up(exc)
                    break
                self._waiting.popleft().settle(_state(reply))
            if not answer.settled:
                answer.settle(JobState.PENDING)

    def _give_up(self, exc: BaseException) -> None:
        """Settle every waiting read as unknown and drop the connection (a new one opens next time)."""
        logger.debug("Deliveries not checked for finished jobs: %s", self.redis.unavailable(exc))
        for waiting in self._waiting:
            waiting.settle(JobState.PENDING)
        self._waiting.clear()
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None


def _state(reply: object) -> JobState:
    if not isinstance(reply, str | bytes) or not reply:
        return JobState.PENDING
    try:
        return JobState(json.loads(reply))
    except ValueError:
        return JobState.PENDING

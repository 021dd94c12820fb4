"""A consumer's acks handed to its connection's thread together, not one wake-up per job.

Dramatiq's RabbitMQ consumer acks from the worker thread that ran the job by asking the
connection's thread to do it (pika's ``add_callback_threadsafe``): one callback, one byte
written to wake the connection's poll, and one wake-up of the consumer's thread per job. Here
the first ack of a batch asks for that wake-up, and the acks of every job that finishes before
the connection's thread runs it go with it: under load, many per wake-up. Only public members
are used: the consumer's ``ack`` and its ``connection``, pika's ``add_callback_threadsafe``.

What it gains: a worker of 8 threads drains a backlog of no-op jobs about a sixth faster, with a
sixth less CPU per job (``benchmarks/throughput.py``'s drain).

Dramatiq's consumer asks for the connection's thread again for each ack, though the batch
already runs there: :class:`LoopThreadCallbacks` runs such a callback at once, so that a batch
costs one wake-up, not two.

A job's ack also waits for its final record write to leave (:class:`UnsentWrites`): a worker
thread whose write another thread is still to send does not wait for it, but its ack does, so
a worker killed in between never leaves an acknowledged message whose record is unfinished.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import pika.exceptions
from dramatiq.errors import ConnectionClosed

from pipeline.jobs.consumers import WrappedConsumer
from pipeline.store.writer import Answer

logger = logging.getLogger(__name__)


class LoopThreadCallbacks:
    """A consumer's connection whose thread-safe callbacks, asked for on the connection's own
    thread, run at once.

    pika's ``add_callback_threadsafe`` wakes the connection's thread (a byte written to its
    poller) and runs the callback on its next turn, even when the connection's thread itself
    asks: Dramatiq's consumer acks that way, so the acks :class:`AcksTogether` makes on the
    connection's thread each cost it one more wake-up. Which thread is the connection's is
    learnt from pika, which runs every callback there; until then each goes through pika.

    Parameters:
      connection: The consumer's ``BlockingConnection``; the rest of it is passed on.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._loop_thread: int | None = None

    def add_callback_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the connection's thread: at once when called there.

        Raises:
          pika.exceptions.AMQPError: As pika's ``add_callback_threadsafe`` (or the callback) raises
            it, on a connection that is closed.
        """
        if threading.get_ident() == self._loop_thread:
            callback()
            return
        self.connection.add_callback_threadsafe(functools.partial(self._on_loop, callback))

    def _on_loop(self, callback: Callable[[], object]) -> None:
        self._loop_thread = threading.get_ident()
        callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


class UnsentWrites:
    """The final record writes not yet sent to Redis, by job id, that the jobs' acks wait for.

    The job-records middleware notes a write it handed to another thread's batch; the consumer
    acknowledges that job once the write has left for Redis (its answer is not awaited: a write
    on its way survives its worker). Shared by both as an explicit object.
    """

    def __init__(self) -> None:
        self._writes: dict[str, Answer[Any]] = {}
        self._lock = threading.Lock()

    def note(self, message_id: str, write: Answer[Any]) -> None:
        """Hold the ack of ``message_id`` until ``write`` has left for Redis."""
        with self._lock:
            self._writes[message_id] = write
        write.when_sent(lambda: self._drop(message_id, write))

    def _drop(self, message_id: str, write: Answer[Any]) -> None:
        with self._lock:
            if self._writes.get(message_id) is write:
                del self._writes[message_id]

    def waiting(self, message_id: str) -> Answer[Any] | None:
        """The write ``message_id``'s ack waits for; None when there is none left to wait for."""
        with self._lock:
            write = self._writes.get(message_id)
        return write if write is not None and not write.sent else None


class AcksTogether(WrappedConsumer):
    """A queue's consumer whose acks reach its connection's thread in batches, each (and each
    rejection) once its job's final record write has left for Redis.

    A consumer without a connection that takes thread-safe callbacks acks as it is.

    Parameters:
      inner: The queue's consumer (Dramatiq's, or a consumer wrapping it).
      unsent: The final writes not sent yet (none when omitted).
    """

    def __init__(self, inner: Any, unsent: UnsentWrites | None = None) -> None:
        super().__init__(inner)
        self.unsent = unsent if unsent is not None else UnsentWrites()
        self._waiting: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        connection = getattr(inner, "connection", None)
        self._call_soon = getattr(connection, "add_callback_threadsafe", None)

    def ack(self, message: Any) -> None:
        """Acknowledge ``message`` with the others that finish before the connection's thread
        next runs; once its job's final record write has left for Redis, when it is still to
        be sent (the ack then goes from the thread that sends it).

        Raises:
          ConnectionClosed: The connection is closed: the message goes back to the queue, and its
            next delivery finds its job finished.
        """
        if self._held(message, self._ack_sent):
            return
        if self._call_soon is None:
            self.inner.ack(message)
            return
        with self._lock:
            first = not self._waiting
            self._waiting.append(message)
        if not first:
            return
        try:
            self._call_soon(self._ack_waiting)
        except (pika.exceptions.AMQPError, OSError) as exc:
            with self._lock:
                self._waiting.clear()
            raise ConnectionClosed(exc) from None

    def nack(self, message: Any) -> None:
        """Reject ``message`` (it is dead-lettered) once its job's ``FAILURE`` write has left for
        Redis, when it is still to be sent.

        Raises:
          ConnectionClosed: The connection is closed: the message goes back to the queue.
        """
        if self._held(message, self._nack_sent):
            return
        self.inner.nack(message)

    def _held(self, message: Any, then: Callable[[Any], None]) -> bool:
        """Whether ``message``'s final write is still to leave; ``then(message)`` runs once it has."""
        write = self.unsent.waiting(message.message_id)
        if write is None:
            return False
        write.when_sent(lambda: then(message))
        return True

    def _nack_sent(self, message: Any) -> None:
        """Reject ``message`` now that its job's final write has left for Redis."""
        try:
            self.inner.nack(message)
        except ConnectionClosed as exc:
            # Redelivered once the consumer is back, and then skipped: its record is final.
            logger.warning("Job %s failed; its rejection was lost with the connection: %s", message.message_id, exc)

    def _ack_sent(self, message: Any) -> None:
        """Acknowledge ``message`` now that its job's final write has left for Redis."""
        try:
            self.ack(message)
        except ConnectionClosed as exc:
            _ack_lost(message, exc)

    def _ack_waiting(self) -> None:
        """On the connection's thread: acknowledge every message handed in so far."""
        with self._lock:
            waiting, self._waiting = self._waiting, collections.deque()
        for message in waiting:
            try:
                self.inner.ack(message)
            except ConnectionClosed as exc:
                _ack_lost(message, exc)


def _ack_lost(message: Any, exc: ConnectionClosed) -> None:
    # Redelivered once the consumer is back, and then skipped: its job finished.
    logger.warning("Job %s finished; its ack was lost with the connection: %s", message.message_id, exc)

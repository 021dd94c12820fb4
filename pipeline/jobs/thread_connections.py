"""Publishing connections that end with the thread that sent on them, and that a quiet spell
does not turn into errors.

Dramatiq's RabbitMQ broker opens a connection (and a channel) for each thread that sends, and
keeps every one in its ``connections`` until the broker closes. Two things follow for a web
service:

- One that sends from a thread, or a greenlet, per request would hold one more AMQP connection,
  and its open files, for every request, until RabbitMQ's connection limit or the process's
  file limit was reached. (Closing the connection after each send, the usual advice, costs
  every send a new connection.)
- A connection sends heartbeats only while its thread uses it: after a quiet spell of about two
  heartbeats RabbitMQ closes it, and the next send meets a dead connection, which pika reports
  with three errors and their tracebacks before the send goes again on a new one.

Here each sending thread holds a token of its connection in a thread-local, which notes when
the thread last sent. When the thread ends, the token goes with it and hands the connection
over to be closed; no I/O runs in that finalizer (under gevent it may run in the event loop,
where nothing may block): the next send (or look at dead letters), on any thread, closes what
ended threads left. A thread's connection is used by that thread alone, so once the thread
ended, nothing else uses it. And a send that finds its thread's connection idle for half a
heartbeat or more closes it first, and sends on a new one. Either connection may have sat
idle long enough for RabbitMQ to close it: what pika says while such a connection is closed,
in the closing thread and at that moment alone, is not an error of anyone's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

#: pika's modules whose loggers report the loss of a connection as an error, with a traceback.
PIKA_LOGGERS = (
    "pika.adapters.utils.io_services_utils",
    "pika.adapters.base_connection",
    "pika.adapters.blocking_connection",
    "pika.connection",
    "pika.channel",
)


class _Token:
    """A thread's hold on its connection: when the thread ends, the connection is handed over."""

    __slots__ = ("connection", "ended", "used")

    def __init__(self, ended: collections.deque[Any], connection: Any) -> None:
        self.ended = ended
        self.connection = connection
        self.used = time.monotonic()

    def __del__(self) -> None:
        if self.connection is not None:
            self.ended.append(self.connection)


class _QuietThread(logging.Filter):
    """Drops the records of the thread that closes a connection RabbitMQ may have closed."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = threading.local()
        self._attached = False
        self._attaching = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` goes on: not while its thread closes a stale connection."""
        return not getattr(self._closing, "stale", False)

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """Within the block, pika's records of this thread are dropped."""
        with self._attaching:
            if not self._attached:
                for name in PIKA_LOGGERS:
                    logging.getLogger(name).addFilter(self)
                self._attached = True
        self._closing.stale = True
        try:
            yield
        finally:
            self._closing.stale = False


_quiet = _QuietThread()


class ThreadConnections:
    """Closes the publishing connection of each thread that ended, and replaces one that sat
    idle long enough for RabbitMQ to close it.

    Parameters:
      broker: Dramatiq's RabbitMQ broker, whose ``connections`` and ``channels`` hold every
        thread's connection and channel, and whose ``connection`` is the calling thread's.
      idle_limit: Seconds a connection may sit idle and still be sent on (read when a send first
        asks): half the heartbeat.
    """

    def __init__(self, broker: Any, idle_limit: Callable[[], float]) -> None:
        self.broker = broker
        self._idle_limit = idle_limit
        self._limit: float | None = None
        self._held = threading.local()
        self._ended: collections.deque[Any] = collections.deque()

    def refresh(self) -> None:
        """Before a send: close the calling thread's connection when it sat idle too long (the
        send then opens a new one).
        """
        token = getattr(self._held, "token", None)
        if token is None or token.connection is None:
            return
        if self._limit is None:
            self._limit = self._idle_limit()
        if time.monotonic() - token.used < self._limit:
            return
        connection, token.connection = token.connection, None
        _close_quietly(connection)
        # Closed, with its channel: the broker forgets them without another word to RabbitMQ.
        # Still among its connections, it is still this thread's (after a failed send the
        # broker dropped it, and the thread may have none now: asking would open one).
        if connection in self.broker.connections:
            del self.broker.connection

    def hold(self, connection: Any) -> None:
        """After a send: note ``connection`` as the calling thread's, used now, to be closed
        when the thread ends; close the connections of the threads that ended.
        """
        while self._ended:
            self._close(self._ended.popleft())
        token = getattr(self._held, "token", None)
        if token is not None and token.connection is connection:
            token.used = time.monotonic()
            return
        if token is not None:
            # The thread's earlier connection broke, and the broker closed it already.
            token.connection = None
        self._held.token = _Token(self._ended, connection)

    def _close(self, connection: Any) -> None:
        self.broker.connections.discard(connection)
        for channel in list(self.broker.channels):
            if channel.connection is connection:
                self.broker.channels.discard(channel)
        _close_quietly(connection)


def _close_quietly(connection: Any) -> None:
    """Close ``connection``, which may have sat idle long enough for RabbitMQ to close it: what
    pika says of that, in this thread while it closes, is dropped, and so is the error it raises.
    """
    if not connection.is_open:
        return
    with _quiet.closing(), contextlib.suppress(Exception):
        connection.close()

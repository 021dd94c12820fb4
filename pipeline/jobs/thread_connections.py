"""Publishing connections that end with the thread that sent on them.

Dramatiq's RabbitMQ broker opens a connection (and a channel) for each thread that sends, and
keeps every one in its ``connections`` until the broker closes. A web service that sends from a
thread, or a greenlet, per request would hold one more AMQP connection, and its open files, for
every request, until RabbitMQ's connection limit or the process's file limit was reached.
(Closing the connection after each send, the usual advice, costs every send a new connection.)

Here each sending thread holds a token of its connection in a thread-local: when the thread
ends, the token goes with it and hands the connection over to be closed. No I/O runs in that
finalizer (under gevent it may run in the event loop, where nothing may block): the next send,
on any thread, closes what ended threads left. A thread's connection is used by that thread
alone, so once the thread ended, nothing else uses it.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class _Token:
    """A thread's hold on its connection: when the thread ends, the connection is handed over."""

    __slots__ = ("connection", "ended")

    def __init__(self, ended: collections.deque[Any], connection: Any) -> None:
        self.ended = ended
        self.connection = connection

    def __del__(self) -> None:
        if self.connection is not None:
            self.ended.append(self.connection)


class ThreadConnections:
    """Closes the publishing connection of each thread that ended.

    Parameters:
      broker: Dramatiq's RabbitMQ broker, whose ``connections`` and ``channels`` hold every
        thread's connection and channel.
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._held = threading.local()
        self._ended: collections.deque[Any] = collections.deque()

    def hold(self, connection: Any) -> None:
        """Note ``connection`` as the calling thread's, to be closed when the thread ends, and
        close the connections of the threads that ended since the last call.
        """
        while self._ended:
            self._close(self._ended.popleft())
        token = getattr(self._held, "token", None)
        if token is not None and token.connection is connection:
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
        if not connection.is_open:
            return
        try:
            connection.close()
        except Exception as exc:  # noqa: BLE001 - a connection that broke is closed all the same
            logger.debug("The connection of an ended thread did not close cleanly: %s", exc)

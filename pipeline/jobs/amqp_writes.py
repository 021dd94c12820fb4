"""How pipeline's AMQP output reaches the socket: fewer, larger writes, the same bytes.

pika queues each frame it emits as a chunk of its own and sends each chunk with a system call of
its own, each carrying a few dozen bytes through the kernel's TCP stack:

- a publish is three frames or more (method, header, body): three sends per message, a fifth of
  the cost of an unconfirmed send;
- Dramatiq hands each ack to the consumer's thread, where pika's blocking channel flushes it at
  once: a poll, a send and two changes of the poller's interest per job.

Here a connection sends what it has queued in one write, and a consumer's acks stay in pika's
output buffer until the consumer's own loop flushes it, a moment later: the acks of the jobs
that finished meanwhile go out together.
"""

from __future__ import annotations

import collections
from typing import Any

import pika

#: Queued chunks up to this many bytes in all are joined before a send; past it they go as pika
#: sends them (joining copies every byte once more, and a partial send copies the rest again).
JOIN_AT_MOST = 128 * 1024


def join_writes(connection: pika.BlockingConnection) -> pika.BlockingConnection:
    """Make ``connection`` send everything it has queued for its socket in one write.

    pika's transport sends the chunks of its output queue one by one; this connection's
    transport joins them first (up to :data:`JOIN_AT_MOST` bytes), on this connection only.

    Returns:
      ``connection``; as pika made it where its transport is not the one this knows (a pika
      release that changed it): the bytes are the same either way.
    """
    transport: Any = getattr(connection._impl, "_transport", None)
    produce = getattr(transport, "_produce", None)
    chunks = getattr(transport, "_tx_buffers", None)
    if produce is None or not isinstance(chunks, collections.deque):
        return connection
    if not hasattr(transport, "_tx_buffered_byte_count"):
        return connection

    def joined_produce() -> None:
        if len(chunks) > 1 and transport._tx_buffered_byte_count <= JOIN_AT_MOST:
            joined = b"".join(chunks)
            chunks.clear()
            chunks.append(joined)
        produce()

    transport._produce = joined_produce
    return connection


class BufferedAcks:
    """A consumer's channel whose ``basic_ack`` and ``basic_nack`` leave the frame in pika's
    output buffer, for the consumer's own loop to flush (it flushes before it waits again).

    Only for a channel whose acks run on its connection's thread, as Dramatiq's consumer's do
    (through ``add_callback_threadsafe``).

    Parameters:
      channel: The consumer's ``BlockingChannel``.
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        """Acknowledge ``delivery_tag``; the frame goes with the connection's next flush."""
        self._channel._impl.basic_ack(delivery_tag=delivery_tag, multiple=multiple)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True) -> None:
        """Reject ``delivery_tag``; the frame goes with the connection's next flush."""
        self._channel._impl.basic_nack(delivery_tag=delivery_tag, multiple=multiple, requeue=requeue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def buffer_acks(consumer: Any) -> Any:
    """Make Dramatiq's RabbitMQ ``consumer`` send its acks together, in one write (where its
    channel is pika's, as this knows it).

    Returns:
      ``consumer``.
    """
    join_writes(consumer.connection)
    if hasattr(consumer.channel, "_impl"):
        consumer.channel = BufferedAcks(consumer.channel)
    return consumer

"""The one place pipeline touches private members of pika: a consumer's acks, and a batch's
publishes, sent together.

Dramatiq hands each ack to the consumer's thread, where pika's ``BlockingChannel.basic_ack``
flushes it at once: a poll, a send and two changes of the poller's interest per job, on the
thread that also feeds every worker thread. Here a consumer's ``basic_ack`` goes to the channel
underneath (``BlockingChannel._impl``, a ``pika.channel.Channel``, whose ``basic_ack`` is
public), which leaves the frame in pika's output buffer; the consumer's own loop flushes it
before it waits again, so the acks of the jobs that finished meanwhile go out in one write. The
frames are the same. A rejection, rare, goes through the channel it wraps.

A batch (``send_many``) is published the same way: its messages go to the channel underneath,
their frames waiting in the output buffer, but for every :data:`PUBLISHED_TOGETHER`-th and the
last, which go through the ``BlockingChannel``: it writes all that waits and raises what
RabbitMQ said meanwhile (a channel closed for a message too large), as it did for each. pika's
own ``basic_publish`` turns the connection's I/O loop (a poll and its bookkeeping) for every
message it writes. Before that publish, the frames waiting in the output buffer of the
connection's transport (``_transport._tx_buffers``, a deque of frames, each of which pika
writes with a socket send of its own: three per message) are joined into one, which it writes
with one send, or with as few as the socket takes.

What earns it: a worker of 8 threads drains a backlog about a fifth faster with it (measured with
``benchmarks/throughput.py``'s drain), and ``send_many`` publishes 6 to 13% more messages a
second, with a fifth less of the sender's CPU per message; joining the frames adds 7 to 21%
(median 18%) to that rate, with a fifth less of the sender's CPU and of RabbitMQ's per message
(three alternating runs of 20,000 messages). It holds for pika 1.4
(``setup.cfg`` pins the range), and ``tests/integration/test_pika_adapter.py`` checks it
against the installed pika: a release that changes ``_impl`` or the transport's buffer makes
the adapter step aside (pika's own acks, publishes and writes), and that test fail.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import pika
import pika.channel

#: Messages of a batch whose frames wait in pika's output buffer before they are written
#: together: few enough that RabbitMQ routes the first while the next are built.
PUBLISHED_TOGETHER = 64


class BufferedAcks:
    """A consumer's channel whose ``basic_ack`` leaves the frame in pika's output buffer, for
    the consumer's own loop to flush (it flushes before it waits again); the rest, rejections
    included, goes to ``channel``.

    Only for a channel whose acks run on its connection's thread, as Dramatiq's consumer's do
    (through ``add_callback_threadsafe``).

    Parameters:
      channel: The consumer's ``BlockingChannel``.
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._impl: pika.channel.Channel = channel._impl

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        """Acknowledge ``delivery_tag``; the frame goes with the connection's next flush."""
        self._impl.basic_ack(delivery_tag=delivery_tag, multiple=multiple)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def buffer_acks(consumer: Any) -> Any:
    """Make Dramatiq's RabbitMQ ``consumer`` send its acks together, where its channel is
    pika's as this knows it (else it is left as it is).

    Returns:
      ``consumer``.
    """
    if isinstance(getattr(consumer.channel, "_impl", None), pika.channel.Channel):
        consumer.channel = BufferedAcks(consumer.channel)
    return consumer


def publish_together(channel: Any, routing_key: str, messages: Sequence[tuple[bytes, pika.BasicProperties]]) -> None:
    """Publish ``messages`` to ``routing_key`` through the default exchange on ``channel``,
    their frames written :data:`PUBLISHED_TOGETHER` messages at a time; every frame has been
    written when it returns.

    Only for a ``BlockingChannel`` without publisher confirms (a transaction's: its commit is
    the confirmation), used by the calling thread alone.

    Raises:
      pika.exceptions.AMQPError: As ``BlockingChannel.basic_publish`` raises it, at the write
        that found it.
    """
    impl = getattr(channel, "_impl", None)
    last = len(messages) - 1
    for index, (body, properties) in enumerate(messages):
        if isinstance(impl, pika.channel.Channel) and index != last and (index + 1) % PUBLISHED_TOGETHER:
            impl.basic_publish(exchange="", routing_key=routing_key, body=body, properties=properties)
        else:
            if impl is not None:
                join_waiting_frames(impl)
            channel.basic_publish(exchange="", routing_key=routing_key, body=body, properties=properties)


def join_waiting_frames(impl: Any) -> bool:
    """Join the frames waiting in the output buffer of the transport under ``impl`` (a
    ``pika.channel.Channel``) into one, which pika's next flush writes with one socket send
    where it would make one per frame; whether it found the buffer as this knows it.
    """
    buffers = getattr(getattr(impl.connection, "_transport", None), "_tx_buffers", None)
    if not isinstance(buffers, collections.deque):
        return False
    if len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)
    return True

"""The pika adapter against the installed pika and the real RabbitMQ: a consumer's acks wait for
its loop's next flush, and a batch's publishes for the channel's own publish, then reach
RabbitMQ. It fails when a pika release changes what it relies on."""

from __future__ import annotations

import pika.channel
import pytest

from pipeline.jobs.pika_adapter import BufferedAcks
from pipeline.queues import DEFAULT_QUEUE

pytestmark = pytest.mark.integration


def _count_socket_writes(connection, writes: list[bytes]):
    """Note every socket write of ``connection`` in ``writes`` (pika's transport, as installed);
    returns what undoes it."""
    transport = connection._impl._transport
    send = type(transport)._sigint_safe_send

    def noted(sock, data):
        writes.append(bytes(data))
        return send(sock, data)

    transport._sigint_safe_send = noted
    return lambda: delattr(transport, "_sigint_safe_send")


def test_the_installed_pika_has_the_channel_the_adapter_uses(purge):
    from pipeline.broker import broker

    purge(DEFAULT_QUEUE)
    consumer = broker.consume(DEFAULT_QUEUE, prefetch=1, timeout=100)
    try:
        channel = getattr(consumer, "inner", consumer).channel
        assert isinstance(channel, BufferedAcks)
        assert isinstance(channel._impl, pika.channel.Channel)
    finally:
        consumer.close()


def test_the_installed_pika_has_the_output_buffer_the_adapter_joins(purge):
    from pipeline.broker import broker
    from pipeline.jobs.pika_adapter import join_waiting_frames

    channel = broker.connection.channel()
    try:
        assert join_waiting_frames(channel._impl)
    finally:
        channel.close()


def test_a_consumers_acks_go_out_together_and_reach_rabbitmq(purge):
    from pipeline.actors import ping
    from pipeline.broker import broker

    purge(DEFAULT_QUEUE)
    for n in range(5):
        ping.send(n)
    consumer = broker.consume(DEFAULT_QUEUE, prefetch=10, timeout=500)
    inner = getattr(consumer, "inner", consumer)
    writes: list[bytes] = []
    undo = _count_socket_writes(inner.connection, writes)
    try:
        received = []
        while len(received) < 5:
            message = next(consumer)
            if message is not None:
                received.append(message)
        del writes[:]
        for message in received:
            consumer.ack(message)
        assert writes == []  # handed to the consumer's thread, not sent yet
        next(consumer)  # the consumer's loop runs the acks and flushes them together (then times out)
        assert sum(write.count(b"\x00\x3c\x00\x50") for write in writes) == 5  # five Basic.Ack frames
    finally:
        undo()
        consumer.close()
    assert broker.channel.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count == 0


def test_a_batchs_publishes_wait_in_pikas_buffer_then_reach_rabbitmq_in_one_transaction(purge):
    from pipeline.actors import ping
    from pipeline.broker import broker
    from pipeline.jobs.pika_adapter import PUBLISHED_TOGETHER, publish_together
    from pipeline.jobs.properties import message_properties

    purge(DEFAULT_QUEUE)
    count = PUBLISHED_TOGETHER + 6
    messages = [ping.message_with_options(args=(n,)) for n in range(count)]
    bodies = [(m.encode(), message_properties(m, "pipeline")) for m in messages]
    channel = broker.connection.channel()
    writes: list[bytes] = []
    undo = _count_socket_writes(channel.connection, writes)
    published_at: list[int] = []
    blocking_publish = channel.basic_publish

    def noted_publish(**kwargs):
        # The channel's own publish writes what waits: note how many publishes were written then.
        published_at.append(sum(write.count(b"\x00\x3c\x00\x28") for write in writes))  # Basic.Publish
        blocking_publish(**kwargs)

    channel.basic_publish = noted_publish
    try:
        channel.tx_select()
        del writes[:]
        publish_together(channel, DEFAULT_QUEUE, bodies)
        # Nothing written until the channel's own publish of every PUBLISHED_TOGETHER-th message
        # and of the last; then every frame is written, in order.
        assert published_at == [0, PUBLISHED_TOGETHER]
        assert sum(write.count(b"\x00\x3c\x00\x28") for write in writes) == count
        # Each flush writes the frames that waited with one send (pika's own makes one per
        # frame: three per message), and the channel's own publish with its three.
        assert len(writes) <= 2 * (1 + 3), len(writes)
        assert broker.channel.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count == 0
        channel.tx_commit()
    finally:
        undo()
        channel.close()
    queued = broker.channel.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count
    assert queued == count
    bodies_received = []
    for _ in range(count):
        _, properties, body = broker.channel.basic_get(DEFAULT_QUEUE, auto_ack=True)
        bodies_received.append((body, properties.message_id))
    assert bodies_received == [(m.encode(), m.message_id) for m in messages]

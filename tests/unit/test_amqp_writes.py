"""The joined writes and buffered acks step aside where pika's internals are not the ones they know."""

from __future__ import annotations

import collections
from types import SimpleNamespace

from pipeline.jobs.amqp_writes import BufferedAcks, buffer_acks, join_writes


def test_a_connection_whose_transport_is_unknown_is_left_as_pika_made_it():
    for transport in (None, SimpleNamespace(), SimpleNamespace(_produce=lambda: None, _tx_buffers=[])):
        connection = SimpleNamespace(_impl=SimpleNamespace(_transport=transport))
        assert join_writes(connection) is connection  # type: ignore[arg-type]
        assert transport is None or not hasattr(transport, "_tx_buffered_byte_count")


def test_queued_chunks_are_joined_up_to_the_limit():
    sent: list[bytes] = []
    chunks = collections.deque([b"method", b"header", b"body"])
    transport = SimpleNamespace(_tx_buffers=chunks, _tx_buffered_byte_count=16)
    transport._produce = lambda: sent.extend(chunks)
    join_writes(SimpleNamespace(_impl=SimpleNamespace(_transport=transport)))  # type: ignore[arg-type]
    transport._produce()
    assert sent == [b"methodheaderbody"]
    sent.clear()
    chunks.clear()
    chunks.extend([b"x" * 100_000, b"y" * 100_000])
    transport._tx_buffered_byte_count = 200_000
    transport._produce()
    assert [len(chunk) for chunk in sent] == [100_000, 100_000]


def test_a_consumer_whose_channel_is_not_pikas_keeps_it():
    channel = SimpleNamespace(basic_ack=lambda *a, **k: None)
    consumer = SimpleNamespace(connection=SimpleNamespace(_impl=SimpleNamespace()), channel=channel)
    assert buffer_acks(consumer).channel is channel
    pikas = SimpleNamespace(_impl=SimpleNamespace())
    consumer = SimpleNamespace(connection=SimpleNamespace(_impl=SimpleNamespace()), channel=pikas)
    assert isinstance(buffer_acks(consumer).channel, BufferedAcks)

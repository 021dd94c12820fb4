"""The broker against the real RabbitMQ: priorities, confirms, bulk send, clear errors."""

from __future__ import annotations

import time
import uuid

import pika
import pytest
import sample_actors
from testenv import make_settings

from pipeline.actors import ping
from pipeline.broker import PipelineBroker, broker, build_broker
from pipeline.errors import BrokerUnavailable, InvalidPriority, QueueMismatch
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def test_each_queue_is_declared_with_its_own_max_priority(purge, amqp):
    purge(DEFAULT_QUEUE)
    purge(SLOW_QUEUE)
    # Redeclaring with the same arguments succeeds; with any other max priority RabbitMQ refuses.
    for queue, highest in ((DEFAULT_QUEUE, 10), (SLOW_QUEUE, 5)):
        amqp.queue_declare(queue, durable=True, arguments=broker._build_queue_arguments(queue))
        assert broker._build_queue_arguments(queue)["x-max-priority"] == highest
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel = amqp.connection.channel()
            arguments = {**broker._build_queue_arguments(queue), "x-max-priority": highest + 1}
            channel.queue_declare(queue, durable=True, arguments=arguments)
        assert refused.value.reply_code == 406


def test_priority_reaches_rabbitmq_as_the_amqp_priority(purge, amqp):
    purge(SLOW_QUEUE)
    sample_actors.record_order.send("x", priority=4)
    _, properties, _ = amqp.basic_get(SLOW_QUEUE, auto_ack=True)
    assert properties.priority == 4


def test_the_actor_default_priority_applies_when_the_sender_gives_none(purge, amqp):
    purge(DEFAULT_QUEUE)
    message = ping.send(1)
    _, properties, _ = amqp.basic_get(DEFAULT_QUEUE, auto_ack=True)
    assert properties.priority == 0 and message.options["broker_priority"] == 0


def test_a_priority_above_the_queue_maximum_is_refused(purge):
    with pytest.raises(InvalidPriority, match=r"priority 6 is outside 0\.\.5.*'slow'"):
        sample_actors.record_order.send("x", priority=6)


def test_higher_priority_messages_are_processed_first_from_a_backlog(purge, start_worker, clean_redis):
    purge(SLOW_QUEUE)
    low = [sample_actors.record_order.send(f"low-{i}", priority=1) for i in range(10)]
    high = [sample_actors.record_order.send(f"high-{i}", priority=5) for i in range(5)]
    # One thread and a prefetch of one: the worker holds one message at a time, so each
    # delivery is RabbitMQ's choice from the whole backlog, made by priority.
    start_worker([SLOW_QUEUE], threads=1, env={"dramatiq_queue_prefetch": "1"})
    for message in low + high:
        AsyncResult(message.message_id).get(timeout=20)
    order = clean_redis.lrange(sample_actors.ORDER_KEY, 0, -1)
    assert order[:5] == [f"high-{i}" for i in range(5)]
    assert order[5:] == [f"low-{i}" for i in range(10)]


def test_send_many_confirms_every_message_and_writes_queued_records(purge, amqp):
    purge(DEFAULT_QUEUE)
    messages = ping.send_many(({"payload": i} for i in range(1200)), priority=3, batch_size=500)
    assert len(messages) == 1200
    time.sleep(0.1)
    assert amqp.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count == 1200
    record = AsyncResult(messages[-1].message_id).info()
    assert record["state"] == "QUEUED" and record["priority"] == 3 and record["actor"] == "ping"
    _, properties, _ = amqp.basic_get(DEFAULT_QUEUE, auto_ack=True)
    assert properties.priority == 3 and properties.delivery_mode == 2
    purge(DEFAULT_QUEUE)


def test_send_many_messages_are_processed(purge, start_worker):
    purge(DEFAULT_QUEUE)
    messages = ping.send_many([((i,), {}) for i in range(50)])
    start_worker([DEFAULT_QUEUE], threads=4)
    assert [AsyncResult(m.message_id).get(timeout=20) for m in messages] == [{"pong": i} for i in range(50)]


def test_sending_with_rabbitmq_down_names_the_url_without_password():
    down = build_broker(Settings(broker_url="amqp://shop:s3cret@127.0.0.1:1/%2F"))
    with pytest.raises(BrokerUnavailable) as raised:
        down.enqueue(ping.message_with_options(args=(1,), priority=0))
    assert "amqp://shop:***@127.0.0.1:1/%2F" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_a_queue_declared_with_other_arguments_is_reported(amqp):
    queue = f"pipeline_test_{uuid.uuid4().hex[:8]}"
    channel = amqp.connection.channel()
    channel.queue_declare(queue, arguments={"x-max-priority": 3}, auto_delete=True)
    mismatched = PipelineBroker(make_settings(queue_priorities={queue: 7}))
    try:
        with pytest.raises(QueueMismatch, match=queue):
            mismatched.declare_queue(queue, ensure=True)
    finally:
        mismatched.close()
        channel.queue_delete(queue)

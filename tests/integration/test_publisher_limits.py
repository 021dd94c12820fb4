"""RabbitMQ's limits on publishers, on a node of the test's own: a message over its small
``max_message_size`` is refused at once as invalid, naming its size and the limit, with nothing
queued or recorded; a resource alarm that blocks publishers holds a send no longer than the
broker's blocked timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from private_rabbitmq import PrivateRabbitMQ, running_node
from testenv import NAMESPACE, make_settings
from waiting import wait_until

from pipeline.broker import build_broker
from pipeline.errors import InvalidMessage, MessageTooLarge
from pipeline.queues import DEFAULT_QUEUE

# The module takes about 32 s (a node of its own, a frozen node, a resource alarm): it is
# placed whole, with the long tests.
pytestmark = [pytest.mark.integration, pytest.mark.lasts(8)]

#: The node's limit, in bytes.
LIMIT = 1_048_576


@pytest.fixture(scope="module")
def small_limit_node() -> Iterator[PrivateRabbitMQ]:
    with running_node("pipeline-rabbitmq-size-", f"max_message_size = {LIMIT}\n") as node:
        yield node


def test_a_message_over_the_servers_limit_is_refused_at_once_naming_size_and_limit(small_limit_node, clean_redis):
    from pipeline.actors import ping

    broker = build_broker(make_settings(broker_url=small_limit_node.url))
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    message = ping.message_with_options(args=("x" * (2 * LIMIT),))
    started = time.monotonic()
    with pytest.raises(MessageTooLarge) as raised:
        broker.enqueue(message)
    assert time.monotonic() - started < 3
    assert isinstance(raised.value, InvalidMessage)
    assert f"{len(message.encode()):,} bytes" in str(raised.value) and str(LIMIT) in str(raised.value)
    assert list(clean_redis.scan_iter(f"{NAMESPACE}:job:*")) == []
    # The broker goes on: a message under the limit is taken on a new channel.
    assert broker.enqueue(ping.message_with_options(args=("small",))).message_id
    assert broker.get_queue_message_counts(DEFAULT_QUEUE)[0] == 1
    broker.close()


def test_a_send_many_batch_over_the_limit_is_refused_at_once_and_names_what_was_sent(small_limit_node, clean_redis):
    from pipeline.jobs.actor_class import actor
    from pipeline.results import AsyncResult

    broker = build_broker(make_settings(broker_url=small_limit_node.url))
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    broker.flush(DEFAULT_QUEUE)
    bound = actor(lambda payload: payload, actor_name="echo_payload", queue_name=DEFAULT_QUEUE, broker=broker)
    calls = [{"payload": "small"}, {"payload": "small"}, {"payload": "x" * (2 * LIMIT)}, {"payload": "small"}]
    started = time.monotonic()
    with pytest.raises(MessageTooLarge) as raised:
        bound.send_many(calls, batch_size=2)
    assert time.monotonic() - started < 3
    assert "bytes, more than RabbitMQ" in str(raised.value) and "nothing of its batch was sent" in str(raised.value)
    sent = raised.value.sent
    assert len(sent) == 2 and "send_many sent calls 1 to 2 of 4 before this error" in raised.value.__notes__[0]
    assert [AsyncResult(m.message_id).state.value for m in sent] == ["QUEUED", "QUEUED"]
    assert broker.get_queue_message_counts(DEFAULT_QUEUE)[0] == 2
    assert len(list(clean_redis.scan_iter(f"{NAMESPACE}:job:*"))) == 2
    broker.close()


#: Seconds a publish waits on a blocked connection in the test below.
BLOCKED_TIMEOUT = 2.0


def test_a_resource_alarm_makes_sends_give_up_in_time_and_what_they_sent_arrives_after(small_limit_node, clean_redis):
    # RabbitMQ stops reading a publisher's connection while a memory or disk alarm lasts, and
    # pika waited for the confirm for ever: a web request that sent a job hung with it.
    from pipeline.errors import PublishOutcomeUnknown
    from pipeline.jobs.actor_class import actor
    from pipeline.results import AsyncResult
    from pipeline.states import JobState

    broker = build_broker(make_settings(broker_url=small_limit_node.url, broker_blocked_timeout=BLOCKED_TIMEOUT))
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    broker.flush(DEFAULT_QUEUE)
    echo = actor(lambda n: n, actor_name="echo", queue_name=DEFAULT_QUEUE, broker=broker)
    echo.send(0)
    small_limit_node.ctl("set_disk_free_limit", "100000GB")
    try:
        started = time.monotonic()
        with pytest.raises(PublishOutcomeUnknown, match="blocked publishers for more than 2 s") as raised:
            echo.send(1)
        assert time.monotonic() - started < BLOCKED_TIMEOUT + 3
        # It may yet be taken: its record stays, for a worker to carry on.
        assert AsyncResult(raised.value.message_id).state is JobState.QUEUED
        started = time.monotonic()
        with pytest.raises(PublishOutcomeUnknown, match="did not commit the batch of 3 messages"):
            echo.send_many([{"n": n} for n in (2, 3, 4)])
        assert time.monotonic() - started < BLOCKED_TIMEOUT + 3
    finally:
        small_limit_node.ctl("set_disk_free_limit", "1MB")
    assert echo.send(5).message_id
    # RabbitMQ read what the blocked connections held once the alarm cleared: "may" was true.
    wait_until(lambda: broker.get_queue_message_counts(DEFAULT_QUEUE)[0] == 6, what="the six messages in the queue")
    broker.flush(DEFAULT_QUEUE)
    broker.close()


def test_a_frozen_node_holds_a_confirmed_send_no_longer_than_the_heartbeat_says(small_limit_node, clean_redis):
    # A node that stops answering (its host stalled) keeps its TCP connections: a confirmed send
    # waits for the confirm until pika's heartbeat check finds the connection silent, between
    # the heartbeat and twice the heartbeat and 5 s, then gives up on a node that does not
    # answer a new connection's handshake in its stack timeout.
    from pipeline.errors import PublishOutcomeUnknown
    from pipeline.jobs.actor_class import actor
    from pipeline.results import AsyncResult
    from pipeline.states import JobState

    heartbeat, handshake = 2, 3
    url = f"{small_limit_node.url}?heartbeat={heartbeat}&stack_timeout={handshake}"
    broker = build_broker(make_settings(broker_url=url))
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    broker.flush(DEFAULT_QUEUE)
    echo = actor(lambda n: n, actor_name="echo_frozen", queue_name=DEFAULT_QUEUE, broker=broker)
    echo.send(0)
    with small_limit_node.frozen():
        started = time.monotonic()
        with pytest.raises(PublishOutcomeUnknown, match="may or may not have taken") as raised:
            echo.send(1)
        waited = time.monotonic() - started
    assert heartbeat < waited < 2 * (heartbeat + 5) + handshake + 3
    assert AsyncResult(raised.value.message_id).state is JobState.QUEUED
    assert echo.send(2).message_id
    broker.flush(DEFAULT_QUEUE)
    broker.close()

"""The broker against the real RabbitMQ: priorities, confirms, bulk send, clear errors."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import dramatiq
import pika
import pika.exceptions
import pytest
import sample_actors
import testenv
from cli_runner import run_cli
from services import queue_depth
from testenv import make_settings
from waiting import wait_until

from pipeline.actors import ping
from pipeline.broker import PipelineBroker, broker, build_broker
from pipeline.dead_letters import DeadLetters
from pipeline.errors import BrokerUnavailable, InvalidIdempotencyKey, InvalidMessage, InvalidPriority, QueueMismatch
from pipeline.jobs.actor_class import PipelineActor, actor
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def test_each_queue_is_declared_with_its_own_max_priority(purge):
    purge(DEFAULT_QUEUE)
    purge(SLOW_QUEUE)
    declared = {
        q["name"]: q["arguments"] for q in testenv.management("GET", f"queues/{quote(testenv.vhost(), safe='')}")
    }
    assert declared[DEFAULT_QUEUE]["x-max-priority"] == 10
    assert declared[SLOW_QUEUE]["x-max-priority"] == 5
    assert declared[DEFAULT_QUEUE]["x-dead-letter-routing-key"] == DEFAULT_QUEUE + ".XQ"


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


def test_a_message_carries_properties_a_person_can_read_in_the_management_ui(purge, amqp):
    purge(DEFAULT_QUEUE)
    message = ping.send(1, priority=7)
    _, properties, _ = amqp.basic_get(DEFAULT_QUEUE, auto_ack=True)
    assert properties.message_id == message.message_id
    assert properties.type == "ping" and properties.app_id == "pipeline"
    assert properties.content_type == "application/json" and properties.content_encoding == "utf-8"
    assert properties.timestamp == message.message_timestamp // 1000
    assert properties.headers == {"actor": "ping", "attempt": 1, "priority": 7}
    assert properties.delivery_mode == 2 and properties.priority == 7


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("use", ["send", "send_many", "dead letters"])
def test_threads_that_sent_and_ended_leave_no_connection_open(use, purge, amqp):
    # Dramatiq keeps each sending thread's connection until the broker closes: a web service
    # that sends from a thread (or a greenlet) per request held one more AMQP connection, and
    # three more open files, for every request (the dashboard, for every look at dead letters).
    purge(DEFAULT_QUEUE)
    ping.send("warm")
    connections, files = len(broker.connections), _open_files()
    sent = []

    def send() -> None:
        if use == "dead letters":
            with DeadLetters() as letters:
                assert letters.has_queue(DEFAULT_QUEUE)
            sent.append(ping.message())
        else:
            sent.extend(ping.send_many([(("many",), {})]) if use == "send_many" else [ping.send("thread")])

    for _ in range(30):
        thread = threading.Thread(target=send)
        thread.start()
        thread.join()
    # The next send closes what the ended threads left.
    ping.send("after")
    assert len(sent) == 30 and queue_depth(amqp, DEFAULT_QUEUE) == (2 if use == "dead letters" else 32)
    assert len(broker.connections) <= connections + 1
    assert _open_files() <= files + 6


@pytest.fixture
def beating() -> Iterator[PipelineBroker]:
    """A broker whose connections ask for a heartbeat a second: RabbitMQ closes one that was
    silent for about two. Closed afterwards.
    """
    assert "?" not in testenv.BROKER_URL
    quick = build_broker(make_settings(broker_url=testenv.BROKER_URL + "?heartbeat=1"))
    yield quick
    quick.close()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged at WARNING or above."""
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("many", [False, True])
def test_a_send_after_a_quiet_spell_past_rabbitmqs_heartbeat_logs_no_error(many, beating, purge, amqp, caplog):
    # A connection sends heartbeats only while its thread uses it: RabbitMQ closes one that was
    # silent for about two heartbeats, and the next send met it dead, which pika reported with
    # three errors and their tracebacks before the send went again on a new connection.
    purge(DEFAULT_QUEUE)
    quick = beating

    def send(text: str) -> None:
        message = ping.message_with_options(args=(text,))
        if many:
            quick.enqueue_many([message])
        else:
            quick.enqueue(message)

    send("before")
    connection = quick.connection
    send("again")
    assert quick.connection is connection
    # Silent for four heartbeats: RabbitMQ closes it after two or three.
    time.sleep(4.5)
    with caplog.at_level(logging.WARNING):
        send("after")
    assert _warnings(caplog) == []
    assert quick.connection is not connection and not connection.is_open
    assert connection not in quick.connections and len(quick.connections) == 1
    assert queue_depth(amqp, DEFAULT_QUEUE) == 3


def test_the_connection_of_a_thread_that_ended_long_ago_closes_without_an_error(beating, purge, caplog):
    # RabbitMQ closes the connection of a thread that ended once it was silent for about two
    # heartbeats: closing it at the next send met it dead, with pika's three errors.
    purge(DEFAULT_QUEUE)
    thread = threading.Thread(target=lambda: beating.enqueue(ping.message_with_options(args=("thread",))))
    thread.start()
    thread.join()
    (ended,) = beating.connections
    time.sleep(4.5)
    with caplog.at_level(logging.WARNING):
        beating.enqueue(ping.message_with_options(args=("after",)))
    assert _warnings(caplog) == []
    assert ended not in beating.connections and not ended.is_open


def test_a_send_after_a_failed_one_and_a_quiet_spell_still_reports_rabbitmq_away(beating, purge, monkeypatch):
    # A failed send leaves its thread with no connection: the next send, past the idle limit,
    # opened one while it looked at the idle one, and RabbitMQ's absence escaped as pika's error.
    # (``beating`` comes before ``monkeypatch``: pika is itself again when the broker closes.)
    purge(DEFAULT_QUEUE)
    beating.enqueue(ping.message_with_options(args=("before",)))
    # What a send that failed leaves: the broker dropped the thread's connection.
    del beating.connection

    def away(*args, **kwargs):
        raise pika.exceptions.AMQPConnectionError("away")

    monkeypatch.setattr(pika, "BlockingConnection", away)
    time.sleep(1.0)
    with pytest.raises(BrokerUnavailable):
        beating.enqueue(ping.message_with_options(args=("after",)))


def test_a_batch_carries_the_same_properties(purge, amqp):
    purge(DEFAULT_QUEUE)
    (message,) = ping.send_many([((1,), {})], priority=2)
    _, properties, _ = amqp.basic_get(DEFAULT_QUEUE, auto_ack=True)
    assert properties.message_id == message.message_id and properties.type == "ping"
    assert properties.headers["priority"] == 2 and properties.app_id == "pipeline"


def test_connections_are_named_for_the_service_host_and_process(purge):
    purge(DEFAULT_QUEUE)
    ping.send(1)
    expected = f"pipeline on {socket.gethostname()} (pid {os.getpid()})"

    def named() -> bool:
        connections = testenv.management("GET", "connections") or []
        return any(c.get("client_properties", {}).get("connection_name") == expected for c in connections)

    wait_until(named, what=f"a connection named {expected!r} in the management API")


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
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE) == 1200, what="1200 messages in the queue")
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


def test_a_node_that_takes_the_connection_and_says_nothing_is_unavailable_in_time(clean_redis):
    # A frozen or overloaded node: pika's handshake times out with a connector error, which is
    # not one of its AMQP errors, and it escaped send() bare, after twelve handshakes (six
    # attempts of two declares), each the whole stack timeout: three minutes at pika's 15 s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/%2F?stack_timeout=0.5"
        down = build_broker(make_settings(broker_url=url))
        sender = actor(lambda n: n, actor_name=f"silent_{uuid.uuid4().hex[:8]}", queue_name="default", broker=down)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:\d+/%2F"):
            sender.send(1)
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:\d+/%2F"):
            sender.send_many([{"n": 2}])
        # One handshake's timeout each: a node that did not answer one does not answer the next.
        assert time.monotonic() - started < 4
        listed = run_cli("dlq", "list", PIPELINE_BROKER_URL=url, PIPELINE_MANAGEMENT_URL="http://127.0.0.1:1")
        assert listed.returncode == 5 and "did not answer" in listed.stderr, listed.stderr
    assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []


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


def test_a_send_many_batch_refused_by_a_check_queues_nothing_and_leaves_no_record(purge, amqp, clean_redis):
    purge(SLOW_QUEUE)
    from pipeline.actors import export_orders

    with pytest.raises(InvalidMessage, match="give either orders"):
        export_orders.send_many([{"filter": {}}, {"orders": [], "file": "x.jsonl"}])
    assert queue_depth(amqp, SLOW_QUEUE) == 0
    assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []


def test_a_call_refused_in_a_later_batch_refuses_the_whole_send_many_naming_it(purge, amqp, clean_redis):
    # Sent batch by batch, the first two were queued before the third was refused: a caller who
    # fixed the call and sent again would have sent 1,000 jobs twice.
    purge(SLOW_QUEUE)
    from pipeline.actors import export_orders

    calls = [{"filter": {"n": i}} for i in range(1200)]
    calls[1100] = {"orders": [], "file": "x.jsonl"}
    with pytest.raises(InvalidMessage, match="call 1101 of send_many: export_orders: give either orders"):
        export_orders.send_many(calls, batch_size=500)
    keys = ["k1", "k2", "", "k4"]
    with pytest.raises(InvalidIdempotencyKey, match="call 3 of send_many"):
        export_orders.send_many([{"filter": {}}] * 4, batch_size=1, idempotency_keys=keys)
    assert queue_depth(amqp, SLOW_QUEUE) == 0
    assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []


def test_send_many_runs_an_actors_check_once_per_call(purge, amqp, clean_redis):
    # Every call was checked before the first batch and again as its batch was sent: a check
    # that asks a database asked it twice per call.
    purge(DEFAULT_QUEUE)
    checked: list[object] = []
    counted = actor(
        lambda n: n, actor_name="counted_check", queue_name=DEFAULT_QUEUE, check=lambda n: checked.append(n)
    )
    sent = counted.send_many([{"n": n} for n in range(5)], batch_size=2)
    assert checked == [0, 1, 2, 3, 4]
    assert [AsyncResult(m.message_id).state.value for m in sent] == ["QUEUED"] * 5
    assert queue_depth(amqp, DEFAULT_QUEUE) == 5
    purge(DEFAULT_QUEUE)


@pytest.mark.parametrize("batch_size", [0, "10", 2.5, True], ids=["zero", "text", "fraction", "bool"])
def test_send_many_refuses_a_batch_size_that_is_not_a_count(batch_size, purge, amqp):
    purge(DEFAULT_QUEUE)
    with pytest.raises(ValueError, match="batch_size must be a whole number, 1 or more"):
        ping.send_many([{"payload": 1}], batch_size=batch_size)
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0


@pytest.mark.parametrize(
    ("calls", "shown"),
    [([{"payload": 1}, 7], "call 2 of send_many, 7,"), ("ab", "call 1 of send_many, 'a',"), ([((1,),)], "((1,),)")],
)
def test_send_many_refuses_a_call_of_neither_form_and_sends_nothing(calls, shown, purge, amqp, clean_redis):
    purge(DEFAULT_QUEUE)
    with pytest.raises(InvalidMessage) as raised:
        ping.send_many(calls)
    assert shown in str(raised.value) and "neither keyword arguments nor an (args, kwargs) pair" in str(raised.value)
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0
    assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []


def test_a_send_many_batch_rabbitmq_did_not_take_raises_and_leaves_no_record(clean_redis):
    down = build_broker(make_settings(broker_url="amqp://guest:guest@127.0.0.1:1/%2F"))
    unreachable = actor(
        lambda n: n, actor_name=f"unreachable_{uuid.uuid4().hex[:8]}", queue_name="default", broker=down
    )
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1/"):
        unreachable.send_many([{"n": 1}, {"n": 2}])
    assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []


def test_a_send_to_a_queue_declared_with_other_arguments_raises_and_leaves_no_record(amqp, clean_redis):
    queue = f"pipeline_test_{uuid.uuid4().hex[:8]}"
    channel = amqp.connection.channel()
    channel.queue_declare(queue, arguments={"x-max-priority": 3}, auto_delete=True)
    mismatched = build_broker(make_settings(queue_priorities={queue: 7}))
    sender = dramatiq.actor(
        lambda: None, actor_name=f"to_{queue}", broker=mismatched, queue_name=queue, actor_class=PipelineActor
    )
    try:
        with pytest.raises(QueueMismatch, match=queue):
            sender.send()
        assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []
    finally:
        mismatched.close()
        channel.queue_delete(queue)


def test_a_send_many_to_a_queue_declared_with_other_arguments_raises_and_leaves_no_record(amqp, clean_redis):
    # A batch's records are sent ahead of its publish: the refusal takes them back.
    queue = f"pipeline_test_{uuid.uuid4().hex[:8]}"
    channel = amqp.connection.channel()
    channel.queue_declare(queue, arguments={"x-max-priority": 3}, auto_delete=True)
    mismatched = build_broker(make_settings(queue_priorities={queue: 7}))
    sender = actor(lambda n: None, actor_name=f"many_to_{queue}", broker=mismatched, queue_name=queue)
    try:
        with pytest.raises(QueueMismatch, match=queue):
            sender.send_many([{"n": n} for n in range(20)])
        assert list(clean_redis.scan_iter(testenv.NAMESPACE + ":job:*")) == []
    finally:
        mismatched.close()
        channel.queue_delete(queue)

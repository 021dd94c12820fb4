"""The storage version of the classic queues pipeline creates, and queues created without it."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import dramatiq
import pika
import pytest
import testenv
from cli_runner import run_cli
from services import queue_depth
from testenv import make_settings
from waiting import wait_until

from pipeline.broker import PipelineBroker
from pipeline.errors import QueueMismatch
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE

pytestmark = pytest.mark.integration

#: What an earlier pipeline (and Dramatiq) created a queue with: no storage version.
PRIORITY = 7


def _on_server(name: str) -> dict:
    """The management API's view of queue ``name`` in the tests' vhost."""
    return testenv.management("GET", f"queues/{quote(testenv.vhost(), safe='')}/{quote(name, safe='')}")


@pytest.fixture
def queue(amqp) -> Iterator[str]:
    """A queue name of its own, with its .DQ and .XQ deleted afterwards."""
    name = f"pipeline_test_{uuid.uuid4().hex[:8]}"
    yield name
    channel = amqp.connection.channel()
    for each in (name, name + ".DQ", name + ".XQ"):
        channel.queue_delete(each)
    channel.close()


def _old_queues(amqp, name: str, priority: int = PRIORITY) -> dict[str, dict[str, object]]:
    """Create ``name``, its .DQ and .XQ as pipeline created them before it named a storage
    version; the arguments of each.
    """
    dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name + ".XQ"}
    arguments = {
        name: dead_letters | {"x-max-priority": priority},
        name + ".DQ": dead_letters | {"x-max-priority": priority},
        name + ".XQ": {"x-message-ttl": 86400000 * 7},
    }
    channel = amqp.connection.channel()
    for each, args in arguments.items():
        channel.queue_declare(each, durable=True, arguments=args)
    channel.close()
    return arguments


def test_new_classic_queues_are_created_in_the_second_storage_version(queue):
    broker = PipelineBroker(make_settings(queue_priorities={queue: PRIORITY}))
    try:
        broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()
    for name in (queue, queue + ".DQ", queue + ".XQ"):
        found = _on_server(name)
        assert found["arguments"]["x-queue-version"] == 2, (name, found["arguments"])
    assert _on_server(queue)["arguments"]["x-max-priority"] == PRIORITY
    # What the server made of it, where it says (a queue without priorities, once its figures
    # are out: every 5 s).
    status = wait_until(lambda: _on_server(queue + ".XQ").get("backing_queue_status"), timeout=15, what="figures")
    assert status["version"] == 2


def test_with_the_servers_storage_version_queues_are_created_without_one(queue):
    broker = PipelineBroker(make_settings(queue_priorities={queue: PRIORITY}, classic_queue_version="server"))
    try:
        broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()
    for name in (queue, queue + ".DQ", queue + ".XQ"):
        assert "x-queue-version" not in _on_server(name)["arguments"], name
    assert _on_server(queue)["arguments"]["x-max-priority"] == PRIORITY


def test_a_queue_created_without_a_storage_version_is_used_as_it_is(queue, amqp, caplog):
    # An earlier pipeline created its queues without the argument: a declare that names it is
    # refused (PRECONDITION_FAILED), and every send would fail after an upgrade.
    old = _old_queues(amqp, queue)
    broker = PipelineBroker(make_settings(queue_priorities={queue: PRIORITY}))
    sender = dramatiq.actor(lambda n: None, actor_name=f"store_{queue}", queue_name=queue, broker=broker)
    try:
        with caplog.at_level(logging.INFO, logger="dramatiq.broker"):
            sender.send(1)
        assert queue_depth(amqp, queue) == 1
        for name, arguments in old.items():
            assert _on_server(name)["arguments"] == arguments
            assert broker.declared_arguments(name, {}) == arguments
        assert sum("is used as it is" in r.getMessage() for r in caplog.records) == 3
        # A rejection declares the .XQ again as it found it: the consumer's channel stays open
        # and the message reaches it.
        consumer = broker.consume(queue, prefetch=1, timeout=200)
        message = wait_until(lambda: next(consumer), what="the message delivered")
        consumer.nack(message)
        wait_until(lambda: next(consumer) is None and queue_depth(amqp, queue + ".XQ") == 1, what="the rejection")
        consumer.close()
    finally:
        broker.close()


def test_a_queue_found_without_a_storage_version_then_deleted_is_created_in_the_second(queue, amqp):
    # The arguments the queue was found with are those a rejection declares its .XQ with: kept
    # after the .XQ was created anew, they would close the consumer's channel at its next one.
    old = _old_queues(amqp, queue)
    dead_letters = queue + ".XQ"
    broker = PipelineBroker(make_settings(queue_priorities={queue: PRIORITY}))
    try:
        broker.declare_queue(queue, ensure=True)
        wanted = broker.dead_letter_arguments()
        assert broker.declared_arguments(dead_letters, wanted) == old[dead_letters]
        amqp.queue_delete(dead_letters)
        broker.queues_pending.add(queue)
        broker.declare_queue(queue, ensure=True)
        assert broker.declared_arguments(dead_letters, wanted) == wanted
        assert _on_server(dead_letters)["arguments"]["x-queue-version"] == 2
        assert broker.declared_arguments(queue, {}) == old[queue]
    finally:
        broker.close()


def test_a_queue_with_other_arguments_besides_the_storage_version_is_still_refused(queue, amqp):
    _old_queues(amqp, queue)
    broker = PipelineBroker(make_settings(queue_priorities={queue: PRIORITY + 1}))
    try:
        with pytest.raises(QueueMismatch, match=f"{queue}.*x-max-priority"):
            broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()


@pytest.fixture
def own_vhost() -> Iterator[str]:
    """A vhost of its own, deleted afterwards; its URL."""
    vhost = f"pipeline-test-storage-{uuid.uuid4().hex[:8]}"
    testenv.management("PUT", f"vhosts/{vhost}")
    testenv.management("PUT", f"permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    try:
        yield testenv.BROKER_URL.rsplit("/", 1)[0] + "/" + vhost
    finally:
        testenv.management("DELETE", f"vhosts/{vhost}")


def _queues_check(url: str, **env: str) -> dict:
    """What ``pipeline doctor`` says of the queues of the vhost at ``url``."""
    out = run_cli("doctor", "--json", PIPELINE_BROKER_URL=url, **env)
    (queues,) = [check for check in json.loads(out.stdout) if check["check"] == "queues"]
    return queues


def test_doctor_passes_queues_created_without_a_storage_version_with_a_note(own_vhost):
    connection = pika.BlockingConnection(pika.URLParameters(own_vhost))
    for name, priority in ((DEFAULT_QUEUE, 10), (SLOW_QUEUE, 5)):
        _old_queues(connection.channel(), name, priority)
    connection.close()
    queues = _queues_check(own_vhost)
    assert queues["ok"], queues
    assert queues["detail"].count("created without x-queue-version") == 2, queues


def test_doctor_fails_queues_of_a_storage_version_the_settings_leave_to_the_server(own_vhost):
    # Every declare without the argument is refused by such a queue.
    settings = make_settings(broker_url=own_vhost)
    broker = PipelineBroker(settings)
    try:
        broker.declare_queue(DEFAULT_QUEUE, ensure=True)
        broker.declare_queue(SLOW_QUEUE, ensure=True)
    finally:
        broker.close()
    queues = _queues_check(own_vhost, PIPELINE_CLASSIC_QUEUE_VERSION="server")
    assert not queues["ok"], queues
    assert "x-queue-version is 2" in queues["detail"] and "PIPELINE_CLASSIC_QUEUE_VERSION" in queues["detail"]
    assert _queues_check(own_vhost)["ok"]

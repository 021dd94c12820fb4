"""PIPELINE_QUEUE_TYPE=quorum on the real RabbitMQ, in a vhost of the test's own: queues declared
replicated with a delivery limit and the dead-letter setup, jobs run, and a message that keeps
coming back is dead-lettered at its limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest
import testenv
from services import WorkerProcess
from testenv import make_settings
from waiting import wait_until

from pipeline.broker import build_broker
from pipeline.jobs.queue_types import priority_meaning, server_version
from pipeline.queues import DEFAULT_QUEUE

pytestmark = pytest.mark.integration

VHOST = f"{testenv.NAMESPACE}-quorum"


@pytest.fixture(scope="module")
def quorum_url() -> Iterator[str]:
    """The broker URL of a vhost made for the module (deleted after it)."""
    name = quote(VHOST, safe="")
    testenv.management("PUT", f"vhosts/{name}", {})
    testenv.management("PUT", f"permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    yield testenv.BROKER_URL.rsplit("/", 1)[0] + "/" + name
    testenv.management("DELETE", f"vhosts/{name}")


def queue_info(name: str) -> dict:
    return testenv.management("GET", f"queues/{quote(VHOST, safe='')}/{quote(name, safe='')}")


def test_quorum_queues_are_declared_with_a_delivery_limit_and_dead_letters(quorum_url):
    broker = build_broker(make_settings(broker_url=quorum_url, queue_type="quorum", delivery_limit=2))
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    main, delayed, dead = (queue_info(DEFAULT_QUEUE + suffix) for suffix in ("", ".DQ", ".XQ"))
    assert main["type"] == delayed["type"] == dead["type"] == "quorum"
    assert main["arguments"]["x-delivery-limit"] == 2 and "x-max-priority" not in main["arguments"]
    assert main["arguments"]["x-dead-letter-routing-key"] == DEFAULT_QUEUE + ".XQ"
    assert dead["arguments"]["x-message-ttl"] == 7 * 86_400_000
    broker.close()


def test_what_priorities_mean_is_said_for_the_server_reached(quorum_url):
    settings = make_settings(broker_url=quorum_url, queue_type="quorum")
    version = server_version(settings)
    meaning = priority_meaning(settings, version)
    assert version >= (3, 8)
    if version < (4, 0):
        assert "have no priorities" in meaning and ".".join(map(str, version)) in meaning
    assert "served by priority (default 0..10, slow 0..5)" in priority_meaning(make_settings(), version)


def test_jobs_run_on_quorum_queues_and_a_message_past_its_limit_is_dead_lettered(quorum_url, redis_client):
    env = {"PIPELINE_BROKER_URL": quorum_url, "PIPELINE_QUEUE_TYPE": "quorum", "PIPELINE_DELIVERY_LIMIT": "2"}
    settings = make_settings(broker_url=quorum_url, queue_type="quorum", delivery_limit=2)
    broker = build_broker(settings)
    worker = WorkerProcess([DEFAULT_QUEUE], 2, env, ["pipeline.actors"])
    try:
        wait_until(lambda: "Priorities: quorum queues on RabbitMQ" in worker.log, what="the priorities line")
        from pipeline.actors import ping
        from pipeline.results import AsyncResult

        # The process's own actors send through the tests' broker: publish on this one.
        message = ping.message(7)
        broker.enqueue(message)
        assert AsyncResult(message.message_id).get(timeout=20) == {"pong": 7}
    finally:
        worker.discard()

    connection = pika.BlockingConnection(pika.URLParameters(quorum_url))
    channel = connection.channel()
    channel.basic_publish("", DEFAULT_QUEUE, json.dumps({"poison": True}).encode())
    # Each reject with requeue is one more delivery; past the limit RabbitMQ dead-letters it. The
    # killed worker's connection may still be closing in RabbitMQ: a delivery to it, returned,
    # counts too, and the message is away (not gettable) meanwhile.
    dead = DEFAULT_QUEUE + ".XQ"
    rejects = []

    def rejected_past_its_limit() -> bool:
        method, _, _ = channel.basic_get(DEFAULT_QUEUE)
        if method is not None:
            channel.basic_reject(method.delivery_tag, requeue=True)
            rejects.append(method.delivery_tag)
        return channel.queue_declare(dead, passive=True).method.message_count == 1

    wait_until(rejected_past_its_limit, what="the poison dead-lettered")
    assert 1 <= len(rejects) <= 3
    connection.close()
    broker.close()

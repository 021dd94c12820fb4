"""The consumer timeout a worker reads from the real RabbitMQ at start-up, and what it says of it."""

from __future__ import annotations

import logging

import pytest
from testenv import make_settings
from waiting import wait_until

from pipeline.jobs.consumer_timeout import ConsumerTimeoutCheck
from pipeline.queues import DEFAULT_QUEUE

pytestmark = pytest.mark.integration

PROBE_QUEUE = "pipeline-test-timeout-probe"


@pytest.fixture
def probe_queue(amqp):
    """Declare the probe queue with ``arguments``; deleted after the test."""

    def declare(arguments: dict[str, int]) -> str:
        amqp.queue_delete(PROBE_QUEUE)
        amqp.queue_declare(PROBE_QUEUE, arguments=arguments)
        return PROBE_QUEUE

    yield declare
    amqp.queue_delete(PROBE_QUEUE)


def test_a_queue_without_its_own_timeout_is_held_to_the_setting_and_the_worker_says_so(purge):
    purge(DEFAULT_QUEUE)
    [(level, line)] = ConsumerTimeoutCheck(make_settings()).findings([DEFAULT_QUEUE])
    assert "no consumer timeout of its own" in line and "1800000 ms" in line
    assert "RabbitMQ 3." in line and level == logging.INFO


def test_a_queue_timeout_that_differs_from_the_setting_is_reported(probe_queue):
    queue = probe_queue({"x-consumer-timeout": 3_600_000})
    [(level, line)] = ConsumerTimeoutCheck(make_settings()).findings([queue])
    assert "3600000 ms" in line and "set the setting to 3600000" in line and level == logging.WARNING


def test_a_queue_timeout_below_the_longest_hold_is_a_warning_with_its_fix(probe_queue):
    queue = probe_queue({"x-consumer-timeout": 60_000})
    [(level, line)] = ConsumerTimeoutCheck(make_settings()).findings([queue], {queue: 600_000})
    assert "at or below the 600000 ms" in line and "deliver those jobs again" in line and level == logging.WARNING


def test_retry_backoffs_longer_than_the_queue_timeout_need_no_warning(probe_queue):
    # Retries wait in Redis, not in a worker: a long backoff holds no delivery.
    queue = probe_queue({"x-consumer-timeout": 60_000})
    settings = make_settings(retry_max_backoff=3_600_000, rabbitmq_consumer_timeout=60_000, export_time_limit=30)
    assert [line for level, line in ConsumerTimeoutCheck(settings).findings([queue]) if level == logging.WARNING] == []


def test_an_unreachable_management_api_is_one_line_naming_it_without_password():
    settings = make_settings(management_url="http://ops:hidden@127.0.0.1:1")
    [(level, line)] = ConsumerTimeoutCheck(settings).findings([DEFAULT_QUEUE])
    assert level == logging.INFO
    assert "not read from the server" in line and "ops:***@127.0.0.1:1" in line and "hidden" not in line


def test_a_worker_logs_what_it_read_when_it_starts(purge, start_worker):
    purge(DEFAULT_QUEUE)
    worker = start_worker([DEFAULT_QUEUE], threads=1)
    wait_until(lambda: "Queue 'default' has no consumer timeout of its own" in worker.log, what="the start-up line")

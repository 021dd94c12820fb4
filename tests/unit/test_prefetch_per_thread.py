"""A worker's prefetch per thread, from how long its queues' jobs may run (on a stub broker: no
services)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit

from pipeline.jobs.actor_class import PipelineActor
from pipeline.jobs.prefetch import PrefetchFromHolds, prefetch_per_thread
from pipeline.settings import Settings

#: RabbitMQ's default consumer timeout, and the setting's.
TIMEOUT = 30 * 60 * 1000
#: TimeLimit's default: ten minutes.
DEFAULT_LIMIT = 600_000


@pytest.fixture
def stub():
    broker = StubBroker(middleware=[TimeLimit()])
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def declare(broker, name: str, queue: str, **options) -> None:
    dramatiq.actor(lambda: None, actor_class=PipelineActor, broker=broker, actor_name=name, queue_name=queue, **options)


def boot(broker, queues: list[str], threads: int = 8, prefetch: int | None = None) -> int:
    """The prefetch a worker of ``threads`` threads on ``queues`` starts with (Dramatiq's, twice
    the threads, unless ``prefetch`` is given)."""
    worker = SimpleNamespace(
        consumer_whitelist=set(queues), worker_threads=threads, queue_prefetch=prefetch or threads * 2
    )
    PrefetchFromHolds(Settings(rabbitmq_consumer_timeout=TIMEOUT)).before_worker_boot(broker, worker)
    return worker.queue_prefetch


@pytest.mark.parametrize(
    ("longest", "per_thread"),
    [
        (0, 4),
        (60_000, 4),
        (TIMEOUT // 4 - 1, 4),
        (TIMEOUT // 4, 3),
        (DEFAULT_LIMIT, 2),
        (TIMEOUT // 2, 1),
        (TIMEOUT, 1),
        (2 * TIMEOUT, 1),
    ],
)
def test_the_prefetch_per_thread_is_the_most_whose_wait_stays_under_the_timeout(longest, per_thread):
    assert prefetch_per_thread(longest, TIMEOUT) == per_thread
    # A message prefetched behind a job on each thread, then running itself, stays under it.
    assert longest == 0 or per_thread == 1 or per_thread * longest < TIMEOUT


def test_a_queue_of_short_jobs_is_prefetched_four_per_thread(stub):
    declare(stub, "sms", "texts", time_limit=30_000)
    declare(stub, "receipt", "texts", time_limit=60_000)
    assert boot(stub, ["texts"]) == 32


def test_a_queue_whose_actor_declares_no_limit_keeps_dramatiq_s_two_per_thread(stub):
    declare(stub, "sms", "texts", time_limit=30_000)
    declare(stub, "mail", "texts")
    assert boot(stub, ["texts"]) == 16


def test_a_queue_of_long_jobs_is_prefetched_one_per_thread(stub):
    declare(stub, "export", "slow", time_limit=20 * 60 * 1000)
    assert boot(stub, ["slow"]) == 8


def test_a_worker_of_several_queues_takes_the_least_of_theirs(stub):
    declare(stub, "sms", "texts", time_limit=30_000)
    declare(stub, "export", "slow", time_limit=20 * 60 * 1000)
    assert boot(stub, ["texts"]) == 32
    assert boot(stub, ["texts", "slow"]) == 8


def test_a_prefetch_the_operator_set_is_left_as_it_is(stub, caplog):
    declare(stub, "sms", "texts", time_limit=30_000)
    declare(stub, "export", "slow", time_limit=20 * 60 * 1000)
    assert boot(stub, ["texts"], prefetch=3) == 3
    with caplog.at_level(logging.WARNING, logger="pipeline.jobs.prefetch"):
        assert boot(stub, ["slow"], prefetch=24) == 24
    assert "dramatiq_queue_prefetch=24 with 8 threads lets a message of 'slow' wait" in caplog.text

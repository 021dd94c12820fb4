"""The retries middleware on Dramatiq's StubBroker, without services: only what can pass is
retried, with the settings' count, and the rest fails at its first attempt."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from pipeline.errors import TransientError
from pipeline.jobs.retries import PipelineRetries
from pipeline.settings import Settings


@pytest.fixture
def stub():
    settings = Settings(max_retries=2, retry_min_backoff=10, retry_max_backoff=20)
    broker = StubBroker(middleware=[PipelineRetries(settings)])
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    yield broker
    worker.stop()
    broker.close()


def declare(broker, fail_with, **options):
    runs: list[int] = []

    def flaky() -> None:
        runs.append(1)
        raise fail_with

    actor = dramatiq.actor(flaky, broker=broker, actor_name=f"flaky_{id(runs)}", **options)
    return actor, runs


def test_a_passing_failure_is_retried_as_often_as_the_settings_say(stub):
    actor, runs = declare(stub, TransientError("busy"))
    actor.send()
    stub.join(actor.queue_name, fail_fast=False)
    assert len(runs) == 3  # the first attempt and two retries (PIPELINE_MAX_RETRIES)
    assert stub.dead_letters and len(stub.dead_letters) == 1


def test_a_lasting_failure_fails_at_its_first_attempt(stub):
    actor, runs = declare(stub, ValueError("no such invoice"))
    actor.send()
    stub.join(actor.queue_name, fail_fast=False)
    assert len(runs) == 1 and len(stub.dead_letters) == 1


def test_an_actor_declares_more_failures_that_may_pass(stub):
    actor, runs = declare(stub, KeyError("cache"), retry_on=(KeyError,), max_retries=1)
    actor.send()
    stub.join(actor.queue_name, fail_fast=False)
    assert len(runs) == 2

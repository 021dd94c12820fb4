"""Message priorities on a stub broker: defaults, the sender's keyword, the queue's range."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from pipeline.errors import InvalidPriority
from pipeline.jobs.actor_class import PipelineActor
from pipeline.jobs.priorities import MessagePriorities
from pipeline.settings import Settings


@pytest.fixture
def stub():
    broker = StubBroker(middleware=[MessagePriorities(Settings(queue_priorities={"default": 10, "slow": 5}))])
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def declare(broker, queue_name="default", **options):
    return dramatiq.actor(lambda: None, actor_class=PipelineActor, broker=broker, queue_name=queue_name, **options)


def test_the_sender_priority_keyword_becomes_the_broker_priority(stub):
    message = declare(stub).send(priority=8)
    assert message.options["broker_priority"] == 8 and "priority" not in message.options


def test_the_actor_default_applies_otherwise(stub):
    assert declare(stub, broker_priority=6).send().options["broker_priority"] == 6


def test_no_default_means_zero(stub):
    assert declare(stub).send().options["broker_priority"] == 0


@pytest.mark.parametrize(
    "bad", [11, -1, "high", 2.5, True, 10**400, pytest.param(10**5000, id="an integer of 5,001 digits")]
)
def test_a_priority_the_queue_cannot_hold_is_refused(stub, bad):
    with pytest.raises(InvalidPriority, match=r"outside 0\.\.10"):
        declare(stub).send(priority=bad)


@pytest.mark.parametrize("bad", ["high", 2.5, True], ids=["text", "fraction", "bool"])
def test_a_priority_that_is_no_whole_number_is_refused_saying_so(stub, bad):
    # "priority 'high' is outside 0..10" sent the reader looking for a number out of range.
    with pytest.raises(InvalidPriority, match=r"is not a whole number, so outside 0\.\.10"):
        declare(stub).send(priority=bad)


def test_a_default_too_high_for_the_queue_is_refused_when_declared(stub):
    with pytest.raises(InvalidPriority, match=r"actor .*outside 0\.\.5"):
        declare(stub, queue_name="slow", broker_priority=9)


def test_an_unknown_actor_option_is_refused_naming_it(stub):
    with pytest.raises(ValueError, match="not_an_option"):
        declare(stub, not_an_option=1)

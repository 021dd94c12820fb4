"""Declarations and message options no worker could follow, refused where they are made (on a
stub broker: no services)."""

from __future__ import annotations

import math

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, TimeLimit

from pipeline.errors import InvalidActor, InvalidMessage
from pipeline.jobs.actor_class import PipelineActor
from pipeline.jobs.checks import MessageChecks
from pipeline.jobs.options import FromSettings
from pipeline.jobs.retries import PipelineRetries
from pipeline.settings import Settings


@pytest.fixture
def stub():
    # The middleware that define the options checked, as every broker of pipeline has them.
    broker = StubBroker(middleware=[AgeLimit(), TimeLimit(), PipelineRetries(Settings()), MessageChecks()])
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def declare(broker, **options):
    return dramatiq.actor(lambda: None, actor_class=PipelineActor, broker=broker, queue_name="default", **options)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"time_limit": "5m"}, "option time_limit '5m' is not a number of 1 or more"),
        ({"time_limit": math.nan}, "option time_limit nan is not a number of 1 or more"),
        ({"max_retries": -1}, "option max_retries -1 is not a whole number of 0 or more"),
        ({"max_retries": True}, "option max_retries True is not a whole number of 0 or more"),
        ({"min_backoff": "x"}, "option min_backoff 'x' is not a number of 0 or more"),
        ({"max_age": 0}, "option max_age 0 is not a number of 1 or more"),
        ({"check": "not a function"}, "option check 'not a function' is not a function"),
        ({"retry_on": "TimeoutError"}, "option retry_on 'TimeoutError' is not an exception type, or a tuple of them"),
        (
            {"retry_on": (KeyError, "x")},
            "option retry_on (<class 'KeyError'>, 'x') is not an exception type, or a tuple of them",
        ),
    ],
)
def test_a_declaration_no_worker_could_follow_is_refused_naming_the_option(stub, options, problem):
    with pytest.raises(InvalidActor) as raised:
        declare(stub, actor_name="invoices", **options)
    assert str(raised.value) == f"actor 'invoices': {problem}"
    assert "invoices" not in stub.actors


@pytest.mark.parametrize("name", ["invoice_" * 32, "invoices\n"], ids=["256-bytes", "line-break"])
def test_an_actor_whose_name_no_message_could_carry_is_refused(stub, name):
    # The name is every message's AMQP type: each send failed at the publish, past 255 bytes.
    with pytest.raises(InvalidActor, match="the name is not printable text of 1 to 255 bytes"):
        declare(stub, actor_name=name)
    assert name not in stub.actors


def test_an_actor_whose_queue_name_leaves_no_room_for_its_delay_queue_is_refused(stub):
    # The queue was declared, then its .DQ, past 255 bytes, failed every delayed send in pika.
    with pytest.raises(InvalidActor, match="queue name of 253 bytes is longer than 252"):
        dramatiq.actor(lambda: None, actor_class=PipelineActor, broker=stub, queue_name="q" * 253)


def test_numbers_and_options_read_from_the_settings_are_taken(stub):
    declared = declare(
        stub,
        time_limit=FromSettings("export_time_limit", 1000),
        max_retries=3,
        min_backoff=0,
        max_backoff=2.5,
        max_age=60_000,
        check=lambda: None,
        retry_on=(KeyError, OSError),
    )
    union = declare(stub, actor_name="unions", retry_on=KeyError | OSError)
    assert union.options["retry_on"] == KeyError | OSError
    assert declared.options["max_retries"] == 3


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"max_retries": "x"}, "option max_retries 'x' is not a whole number of 0 or more"),
        ({"time_limit": -1}, "option time_limit -1 is not a number of 1 or more"),
    ],
)
def test_a_message_option_no_worker_could_follow_is_refused_at_send(stub, options, problem):
    declared = declare(stub, actor_name="pings")
    with pytest.raises(InvalidMessage) as raised:
        declared.send_with_options(**options)
    assert str(raised.value) == f"pings: {problem}"
    assert stub.queues["default"].qsize() == 0

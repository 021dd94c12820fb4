"""The broker calls only the middleware that act on a signal, in Dramatiq's order and with its errors."""

from __future__ import annotations

import logging

import pytest
from dramatiq.middleware import Middleware, MiddlewareError
from testenv import make_settings

from pipeline.broker import PipelineBroker
from pipeline.jobs.hooks import HookTable, acts_on


class Noting(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_enqueue(self, broker, message, delay):
        self.calls.append(f"before {self.name}")

    def after_enqueue(self, broker, message, delay):
        self.calls.append(f"after {self.name}")


class Silent(Middleware):
    pass


class Failing(Middleware):
    def before_enqueue(self, broker, message, delay):
        raise RuntimeError("broken hook")

    def after_enqueue(self, broker, message, delay):
        raise RuntimeError("broken hook")


class Refusing(Middleware):
    def before_enqueue(self, broker, message, delay):
        raise MiddlewareError("refused")


def test_a_hook_left_as_the_base_no_op_does_not_act():
    assert acts_on(Noting("a", []), "before_enqueue")
    assert not acts_on(Silent(), "before_enqueue")
    assert not acts_on(Noting("a", []), "before_ack")
    # A signal of pipeline's own reaches only the middleware that define its hook.
    assert not acts_on(Silent(), "after_enqueue_failure")


def test_the_table_follows_a_longer_list_of_middleware():
    table, calls = HookTable(), []
    middleware: list[Middleware] = [Silent(), Noting("a", calls)]
    assert [m.name for m in table.acting(middleware, "before_enqueue")] == ["a"]
    middleware.append(Noting("b", calls))
    assert [m.name for m in table.acting(middleware, "before_enqueue")] == ["a", "b"]


@pytest.fixture
def broker():
    return PipelineBroker(make_settings(), middleware=[])


def test_hooks_run_forward_before_and_backward_after_and_added_middleware_join(broker):
    calls: list[str] = []
    broker.add_middleware(Noting("a", calls))
    broker.add_middleware(Silent())
    broker.emit_before("enqueue", None, 0)
    broker.add_middleware(Noting("b", calls))
    broker.emit_before("enqueue", None, 0)
    broker.emit_after("enqueue", None, 0)
    assert calls == ["before a", "before a", "before b", "after b", "after a"]


def test_a_failing_hook_is_logged_and_the_others_still_run(broker, caplog):
    calls: list[str] = []
    broker.add_middleware(Noting("a", calls))
    broker.add_middleware(Failing())
    broker.add_middleware(Noting("b", calls))
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("enqueue", None, 0)
        broker.emit_after("enqueue", None, 0)
    assert calls == ["before a", "before b", "after b", "after a"]
    assert sum("Unexpected failure in" in r.getMessage() for r in caplog.records) == 2


def test_a_middleware_error_before_reaches_the_caller(broker):
    calls: list[str] = []
    broker.add_middleware(Refusing())
    broker.add_middleware(Noting("a", calls))
    with pytest.raises(MiddlewareError, match="refused"):
        broker.emit_before("enqueue", None, 0)
    assert calls == []


class Undoing(Middleware):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def after_enqueue_failure(self, broker, message):
        self.calls.append("failure")


def test_a_signal_of_pipelines_own_reaches_only_the_middleware_that_define_it(broker, caplog):
    calls: list[str] = []
    broker.add_middleware(Silent())
    broker.add_middleware(Undoing(calls))
    broker.add_middleware(Noting("a", calls))
    with caplog.at_level(logging.CRITICAL):
        broker.emit_after("enqueue_failure", None)
    assert calls == ["failure"] and caplog.records == []

"""Actors that exist only for the tests: they fail, retry, report progress and record order.

A worker under test imports them beside ``pipeline.actors``. Their side effects go to Redis
keys under the tests' namespace in the tests' own database, so a test can see what ran.
"""

from __future__ import annotations

import json
import time

from pipeline.actors import actor
from pipeline.errors import PermanentError
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult, report_progress, stop_if_revoked
from pipeline.settings import get_settings
from pipeline.store.connection import get_redis

#: Redis list each ``record_order`` call appends its tag to.
ORDER_KEY = f"{get_settings().namespace}:sample:order"
#: Prefix of the counters ``count_runs`` and ``flaky`` increment.
RUNS_PREFIX = f"{get_settings().namespace}:sample:runs:"


def _redis():
    return get_redis().client


@actor(queue_name=SLOW_QUEUE, max_retries=0)
def record_order(tag: str) -> str:
    """Append ``tag`` to the order list: shows the order messages were processed in."""
    _redis().rpush(ORDER_KEY, tag)
    return tag


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def count_runs(key: str) -> int:
    """Count how many times it ran for ``key``."""
    return int(_redis().incr(RUNS_PREFIX + key))


@actor(queue_name=DEFAULT_QUEUE, max_retries=3, min_backoff=1500, max_backoff=1500)
def flaky(key: str, failures: int) -> int:
    """Fail with a transient error ``failures`` times, then succeed with the run count."""
    runs = int(_redis().incr(RUNS_PREFIX + key))
    if runs <= failures:
        raise ConnectionError(f"run {runs} of {key} fails on purpose")
    return runs


@actor(queue_name=DEFAULT_QUEUE, max_retries=1, min_backoff=100, max_backoff=100)
def unreachable(reason: str) -> None:
    """Always raise ``ConnectionError(reason)``, a passing condition: retried once, then failed."""
    raise ConnectionError(reason)


@actor(queue_name=DEFAULT_QUEUE, max_retries=5)
def crashes(reason: str) -> None:
    """Raise ``ValueError(reason)``, which the same message would raise again: failed at once."""
    raise ValueError(reason)


@actor(queue_name=DEFAULT_QUEUE, max_retries=5)
def refuses(reason: str) -> None:
    """Raise a permanent error: failed at once, never retried."""
    raise PermanentError(reason)


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def steps(key: str, count: int, pause: float) -> int:
    """Do ``count`` steps of ``pause`` seconds, reporting progress and stopping when revoked."""
    for done in range(count):
        stop_if_revoked(f"stopped after {done} of {count} steps")
        _redis().incr(RUNS_PREFIX + key)
        report_progress(done + 1, count, phase="stepping")
        time.sleep(pause)
    return count


@actor(queue_name=DEFAULT_QUEUE, max_retries=3)
def reports(done: object, total: object = None, phase: object = None) -> None:
    """Report the progress given, as given: a report no reader could show fails the job."""
    report_progress(done, total, phase)


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def fails(reason: str, secret: str, permanent: bool = True) -> None:
    """Fail with ``reason`` (a PermanentError, or a ValueError); ``secret`` must never be logged."""
    raise PermanentError(reason) if permanent else ValueError(reason)


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def ping_later(n: int) -> int:
    """Answer ``n``: a quick job that waits in a queue behind a long one."""
    return n


@actor(queue_name=DEFAULT_QUEUE, max_retries=3, min_backoff=100, max_backoff=100)
def waits_for(message_id: str) -> object:
    """Return another job's result: a job that depends on another one."""
    return AsyncResult(message_id).get(timeout=10)


@actor(queue_name=DEFAULT_QUEUE, max_retries=1, min_backoff=20_000, max_backoff=20_000)
def fails_once_then_waits(key: str) -> int:
    """Fail the first run with a passing error, whose retry waits 10 to 20 s; then succeed."""
    runs = int(_redis().incr(RUNS_PREFIX + key))
    if runs == 1:
        raise ConnectionError(f"first run of {key} fails on purpose")
    return runs


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def sleeps_then_counts(key: str, seconds: float) -> int:
    """Sleep ``seconds`` without looking up (a job that cannot stop), then count its run."""
    time.sleep(seconds)
    return int(_redis().incr(RUNS_PREFIX + key))


@actor(queue_name=SLOW_QUEUE, max_retries=0, time_limit=120_000)
def long_steps(key: str, count: int, pause: float) -> int:
    """A long job that checks between its ``count`` steps whether to stop, then counts its run."""
    for done in range(count):
        stop_if_revoked(f"stopped after {done} of {count} steps")
        time.sleep(pause)
    return int(_redis().incr(RUNS_PREFIX + key))


#: Prefix of the flags that make ``fails_until_fixed`` succeed.
FIXED_PREFIX = f"{get_settings().namespace}:sample:fixed:"


@actor(queue_name=DEFAULT_QUEUE, max_retries=0, shown_arguments=("key",))
def fails_until_fixed(key: str, secret: str = "") -> str:
    """Fail for good (dead-lettered) until the flag of ``key`` is set, then succeed; ``secret``
    must never be shown (only ``key`` is declared safe to show).
    """
    if not _redis().get(FIXED_PREFIX + key):
        raise PermanentError(f"<script>alert('{key}')</script> is not fixed yet")
    return "fixed"


@actor(queue_name=DEFAULT_QUEUE, max_retries=3)
def returns_what_json_cannot_hold(kind: str) -> object:
    """Return a result no record can hold: a set, a list holding itself, lists nested deeper
    than any encoder goes, or an integer past Python's conversion limit.
    """
    if kind == "set":
        return {1, 2}
    if kind == "circular":
        itself: list = []
        itself.append(itself)
        return itself
    if kind == "deep":
        deep: list = []
        for _ in range(100_000):
            deep = [deep]
        return deep
    return 10**5000


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def note_outcome(message: dict, outcome: object) -> None:
    """A callback (``on_success``, ``on_failure``): keep what the job it follows ended with."""
    _redis().set(RUNS_PREFIX + "outcome:" + message["message_id"], json.dumps(outcome))

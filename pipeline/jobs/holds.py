"""How long a worker may hold a delivery unacknowledged, from what its actors declare.

RabbitMQ's ``consumer_timeout`` counts from delivery, for every unacknowledged message: the job
that runs, the messages prefetched behind it, and retries waiting out their backoff in a delay
queue. What bounds each is an actor's own options (``time_limit``, ``max_backoff``) or, where it
declares none, the broker's middleware defaults, so an actor of any queue, declared by any
service, is measured the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Retries, TimeLimit
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF


def queue_actors(broker: dramatiq.Broker, queue: str) -> list[dramatiq.Actor]:
    """The actors declared on ``broker`` whose messages go to ``queue`` (or its delay queue)."""
    actors = (broker.get_actor(name) for name in broker.get_declared_actors())
    return [actor for actor in actors if q_name(actor.queue_name) == q_name(queue)]


def _middleware(broker: dramatiq.Broker, kind: type) -> object | None:
    return next((m for m in broker.middleware if isinstance(m, kind)), None)


def longest_run(broker: dramatiq.Broker, queue: str) -> int:
    """Milliseconds the longest job of ``queue`` may run: its actor's ``time_limit``, else the
    ``TimeLimit`` middleware's; 0 when no actor is declared on it.
    """
    limits = _middleware(broker, TimeLimit)
    default = limits.time_limit if isinstance(limits, TimeLimit) else 0
    return max((int(actor.options.get("time_limit", default)) for actor in queue_actors(broker, queue)), default=0)


def longest_backoff(broker: dramatiq.Broker, queue: str) -> int:
    """Milliseconds a retry of ``queue`` may wait in a worker's memory for its time."""
    retries = _middleware(broker, Retries)
    if not isinstance(retries, Retries):
        return 0
    backoffs = (actor.options.get("max_backoff", retries.max_backoff) for actor in queue_actors(broker, queue))
    return max((min(int(backoff), DEFAULT_MAX_BACKOFF) for backoff in backoffs), default=0)


def longest_hold(broker: dramatiq.Broker, queue: str, threads: int, prefetch: int) -> int:
    """Milliseconds a worker of ``threads`` threads prefetching ``prefetch`` messages may hold a
    delivery of ``queue``: a retry waiting out its backoff, or a message prefetched behind jobs
    that each run to the longest time limit, then running to it itself.
    """
    rounds = max(1, math.ceil(prefetch / max(threads, 1)))
    return max(longest_backoff(broker, queue), longest_run(broker, queue) * rounds)


def holds(broker: dramatiq.Broker, queues: Iterable[str], threads: int, prefetch: int) -> dict[str, int]:
    """:func:`longest_hold` of each queue."""
    return {queue: longest_hold(broker, queue, threads, prefetch) for queue in queues}

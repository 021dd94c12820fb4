"""How long a worker may hold a delivery unacknowledged, from what its actors declare.

RabbitMQ's ``consumer_timeout`` counts from delivery, for every unacknowledged message: the job
that runs and the messages prefetched behind it. (Delayed messages and retries waiting out their
backoff are kept in Redis, not held by a worker: see :mod:`pipeline.store.schedule`.) What
bounds each is an actor's own ``time_limit`` or, where it declares none, the ``TimeLimit``
middleware's default, so an actor of any queue, declared by any service, is measured the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import TimeLimit


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


def longest_hold(broker: dramatiq.Broker, queue: str, threads: int, prefetch: int) -> int:
    """Milliseconds a worker of ``threads`` threads prefetching ``prefetch`` messages may hold a
    delivery of ``queue``: a message prefetched behind jobs that each run to the longest time
    limit, then running to it itself.
    """
    rounds = max(1, math.ceil(prefetch / max(threads, 1)))
    return longest_run(broker, queue) * rounds


def holds(broker: dramatiq.Broker, queues: Iterable[str], threads: int, prefetch: int) -> dict[str, int]:
    """:func:`longest_hold` of each queue."""
    return {queue: longest_hold(broker, queue, threads, prefetch) for queue in queues}

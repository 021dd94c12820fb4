"""How long a worker may hold a delivery unacknowledged, from what its actors declare.

RabbitMQ's ``consumer_timeout`` counts from delivery, for every unacknowledged message: the job
that runs and the messages prefetched behind it. (Delayed messages and retries waiting out their
backoff are kept in Redis, not held by a worker: see :mod:`pipeline.store.schedule`.) What
bounds each is an actor's own ``time_limit`` or, where it declares none, the ``TimeLimit``
middleware's default, so an actor of any queue, declared by any service, is measured the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import TimeLimit


def queue_actors(broker: dramatiq.Broker, queue: str) -> list[dramatiq.Actor]:
    """The actors declared on ``broker`` whose messages go to ``queue`` (or its delay queue)."""
    actors = (broker.get_actor(name) for name in broker.get_declared_actors())
    return [actor for actor in actors if q_name(actor.queue_name) == q_name(queue)]


def _middleware(broker: dramatiq.Broker, kind: type) -> object | None:
    return next((m for m in broker.middleware if isinstance(m, kind)), None)


def _default_limit(broker: dramatiq.Broker) -> int:
    """The ``TimeLimit`` middleware's time limit, in milliseconds; 0 without the middleware."""
    limits = _middleware(broker, TimeLimit)
    return int(limits.time_limit) if isinstance(limits, TimeLimit) else 0


def longest_run(broker: dramatiq.Broker, queue: str) -> int:
    """Milliseconds the longest job of ``queue`` may run: its actor's ``time_limit``, else the
    ``TimeLimit`` middleware's; 0 when no actor is declared on it.
    """
    default = _default_limit(broker)
    return max((int(actor.options.get("time_limit", default)) for actor in queue_actors(broker, queue)), default=0)


class RunLimit(NamedTuple):
    """How long a job of one queue may run, as its workers' consumer-timeout check measured it."""

    #: The queue.
    queue: str
    #: Milliseconds its actors' longest time limit allows (:func:`longest_run`); 0: none checked.
    longest: int
    #: The ``TimeLimit`` middleware's time limit, for an actor that declares none.
    default: int

    def problem(
        self, options: Mapping[str, Any], actor_name: str, actor: dramatiq.Actor[Any, Any] | None
    ) -> str | None:
        """What lets a message of ``options`` for actor ``actor_name`` run longer than any
        actor of the queue may: its own ``time_limit``, else its actor's (``actor``, declared
        on another queue); or None.
        """
        if not self.longest:
            return None
        own = options.get("time_limit")
        if own is not None:
            limit, what = own, f"time_limit {own} ms is"
        elif actor is None:
            # No worker knows the actor: the message fails for that.
            return None
        else:
            limit = actor.options.get("time_limit", self.default)
            what = f"actor {actor_name!r} runs up to {limit} ms,"
        if limit <= self.longest:
            return None
        return (
            f"{what} longer than any actor of queue {self.queue!r} declares ({self.longest} ms), which the "
            "workers' consumer timeout is checked against"
        )


def run_limit(broker: dramatiq.Broker, queue: str) -> RunLimit:
    """The :class:`RunLimit` of ``queue``'s jobs on ``broker``."""
    return RunLimit(queue, longest_run(broker, queue), _default_limit(broker))


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

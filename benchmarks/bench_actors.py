"""The no-op actor of the throughput benchmark, on pipeline's broker or on plain Dramatiq.

``BENCH_MODE=pipeline`` (the default) declares it on pipeline's broker, with job records;
``BENCH_MODE=plain`` on a bare ``RabbitmqBroker`` with Dramatiq's own ``Results`` middleware on
a ``RedisBackend``: the baseline. ``BENCH_CONFIRM=on`` (the default) or ``off`` sets publisher
confirms for both (pipeline's through ``PIPELINE_CONFIRM_DELIVERY``, which the benchmark sets).
"""

from __future__ import annotations

import os

import dramatiq

#: The benchmark's own queue, declared without priorities in both modes.
QUEUE = "bench"
MODE = os.environ.get("BENCH_MODE", "pipeline")
CONFIRM = os.environ.get("BENCH_CONFIRM", "on") == "on"

if MODE == "pipeline":
    from pipeline.broker import broker
    from pipeline.jobs.actor_class import actor as declare

    options: dict[str, object] = {}
else:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    from pipeline.settings import get_settings

    settings = get_settings()
    broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=CONFIRM)
    backend = RedisBackend(url=settings.redis_url)
    broker.add_middleware(Results(backend=backend))
    dramatiq.set_broker(broker)
    declare = dramatiq.actor
    options = {"store_results": True}


# A quick job declares how long it may take, as such an actor should: pipeline's workers read it
# (they prefetch four per thread for jobs this short); plain Dramatiq enforces it and no more.
@declare(queue_name=QUEUE, max_retries=0, time_limit=60_000, **options)
def noop(n: int) -> int:
    """Return ``n``: all the cost is the system's."""
    return n

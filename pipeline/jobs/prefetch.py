"""One message per thread on queues of long jobs, so none waits out RabbitMQ's timeout.

RabbitMQ's ``consumer_timeout`` counts from delivery. Dramatiq prefetches two messages per
worker thread, so on a queue of long jobs a message can wait in a worker's memory behind a job
that takes most of the timeout, and then run past it: RabbitMQ closes the channel and delivers
everything again. A worker whose queues hold actors that long (their ``time_limit``, whoever
declared them; see :mod:`pipeline.jobs.holds`) therefore prefetches one message per thread:
every message it holds is running, and its time limit alone bounds the hold.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import Middleware

from pipeline.jobs.holds import longest_hold
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

#: Dramatiq's own prefetch: twice the threads (its ``Worker`` caps it at 65,535).
DRAMATIQ_PREFETCH_PER_THREAD = 2
#: Dramatiq's cap on a prefetch.
MAX_PREFETCH = 65_535


class LongJobPrefetch(Middleware):
    """Sets a worker's prefetch to one per thread when a queue it consumes holds jobs long
    enough for a prefetched message to wait past the consumer timeout; warns when the
    operator's own prefetch (``dramatiq_queue_prefetch``) lets one.

    Parameters:
      settings: Give the consumer timeout (``PIPELINE_RABBITMQ_CONSUMER_TIMEOUT``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Lower the prefetch, or warn about it, before the worker starts its consumers."""
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        threads, prefetch = worker.worker_threads, worker.queue_prefetch
        timeout = self.settings.rabbitmq_consumer_timeout
        too_long = [queue for queue in queues if longest_hold(broker, queue, threads, prefetch) >= timeout]
        if not too_long or prefetch <= threads:
            return
        if prefetch == min(threads * DRAMATIQ_PREFETCH_PER_THREAD, MAX_PREFETCH):
            worker.queue_prefetch = threads
            return
        logger.warning(
            "dramatiq_queue_prefetch=%d with %d threads lets a message of %s wait behind running jobs past "
            "RabbitMQ's consumer timeout (%d ms, PIPELINE_RABBITMQ_CONSUMER_TIMEOUT), which delivers it again: "
            "set dramatiq_queue_prefetch to %d or less for these queues",
            prefetch,
            threads,
            ", ".join(repr(queue) for queue in too_long),
            timeout,
            threads,
        )

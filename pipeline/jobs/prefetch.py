"""A worker's prefetch per thread, from how long its queues' jobs may run.

RabbitMQ's ``consumer_timeout`` counts from delivery, and a prefetched message waits in a
worker's memory behind running jobs. Dramatiq prefetches two messages per worker thread. A
worker sets its own from what its queues' actors declare (their ``time_limit``, whoever declared
them; see :mod:`pipeline.jobs.holds`): as many per thread as can wait behind jobs that each run
to that limit without outliving the timeout, from one to four.

- On a queue of long jobs (``slow``, with the export's time limit), one per thread: every
  message the worker holds is running, and its time limit alone bounds the hold.
- On a queue of short jobs (every actor declares a time limit under a quarter of the timeout),
  four per thread, Celery's default prefetch multiplier: a worker that acknowledges its jobs
  together (see :mod:`pipeline.jobs.acks`) keeps working while the acknowledgements of the
  last ones are on their way, instead of waiting for RabbitMQ's next deliveries.

A prefetched message no longer answers to RabbitMQ's priority or to other workers, which is
why the most is four per thread, and only for jobs that run no longer than that allows. A
prefetch the operator set (``dramatiq_queue_prefetch``) is left as it is, with a warning when
it lets a message wait past the timeout.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq import worker as dramatiq_worker
from dramatiq.middleware import Middleware

from pipeline.jobs.holds import longest_hold, longest_run
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

#: Dramatiq's own prefetch: twice the threads (its ``Worker`` caps it at 65,535).
DRAMATIQ_PREFETCH_PER_THREAD = 2
#: The most a worker prefetches per thread on its own: Celery's default prefetch multiplier.
MOST_PREFETCH_PER_THREAD = 4
#: Dramatiq's cap on a prefetch.
MAX_PREFETCH = 65_535


def prefetch_per_thread(longest: int, timeout: int) -> int:
    """How many messages a worker prefetches per thread on a queue whose jobs run up to
    ``longest`` milliseconds (0: none declared), against a consumer timeout of ``timeout`` ms:
    the most, from one to :data:`MOST_PREFETCH_PER_THREAD`, whose wait behind running jobs
    stays under the timeout.
    """
    if longest <= 0:
        return MOST_PREFETCH_PER_THREAD
    return max(1, min(MOST_PREFETCH_PER_THREAD, (timeout - 1) // longest))


class PrefetchFromHolds(Middleware):
    """Sets a worker's prefetch per thread from how long its queues' jobs may run (see
    :func:`prefetch_per_thread`; the least of its queues'); warns when the operator's own
    prefetch (``dramatiq_queue_prefetch``) lets a message wait past the consumer timeout.

    Parameters:
      settings: Give the consumer timeout (``PIPELINE_RABBITMQ_CONSUMER_TIMEOUT``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Set the prefetch, or warn about the operator's, before the worker starts its consumers."""
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        threads, prefetch = worker.worker_threads, worker.queue_prefetch
        timeout = self.settings.rabbitmq_consumer_timeout
        # Dramatiq's own, unless the operator set it (Dramatiq reads the variable at import),
        # even to the value Dramatiq would have taken.
        if not dramatiq_worker.QUEUE_PREFETCH and prefetch == min(threads * DRAMATIQ_PREFETCH_PER_THREAD, MAX_PREFETCH):
            per_thread = min(
                (prefetch_per_thread(longest_run(broker, queue), timeout) for queue in queues),
                default=DRAMATIQ_PREFETCH_PER_THREAD,
            )
            worker.queue_prefetch = min(threads * per_thread, MAX_PREFETCH)
            return
        too_long = [queue for queue in queues if longest_hold(broker, queue, threads, prefetch) >= timeout]
        if not too_long or prefetch <= threads:
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

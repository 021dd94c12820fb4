"""One message per thread on the queues of long jobs, so none waits out RabbitMQ's timeout.

RabbitMQ's ``consumer_timeout`` counts from delivery. Dramatiq prefetches two messages per
worker thread, so on a queue of long jobs a message can wait in a worker's memory behind a job
that takes most of the timeout, and then run past it: RabbitMQ closes the channel and delivers
everything again. A worker that consumes the ``slow`` queue therefore prefetches one message
per thread: every message it holds is running, and the settings' guard (a time limit below the
consumer timeout) then holds for each of them.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Middleware

from pipeline.queues import SLOW_QUEUE

#: Dramatiq's own prefetch: twice the threads (its ``Worker`` caps it at 65,535).
DRAMATIQ_PREFETCH_PER_THREAD = 2


class LongJobPrefetch(Middleware):
    """Sets a worker's prefetch to one per thread when it consumes the ``slow`` queue.

    A prefetch the operator chose (``dramatiq_queue_prefetch``) is left as it is.
    """

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Lower the prefetch before the worker starts its consumers."""
        queues = worker.consumer_whitelist
        if queues is not None and SLOW_QUEUE not in queues:
            return
        if worker.queue_prefetch == min(worker.worker_threads * DRAMATIQ_PREFETCH_PER_THREAD, 65_535):
            worker.queue_prefetch = worker.worker_threads

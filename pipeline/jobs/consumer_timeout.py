"""At a worker's start, compare the consumer timeout RabbitMQ applies with the one the settings
assume, so that a time limit the server would cut short is found before a job runs into it.

How long a worker may hold a delivery comes from what the actors of each queue declare (see
:mod:`pipeline.jobs.holds`), whichever service declared them; the server's own timeout is what
counts. RabbitMQ 3.12 and later let a queue carry its own timeout (argument
``x-consumer-timeout`` or policy key ``consumer-timeout``), which the management API shows; the
node-wide ``consumer_timeout`` of the server's config file is shown by no API, so without a
per-queue value the setting is taken at its word, and the worker says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from pipeline.background import Background
from pipeline.errors import ManagementUnavailable
from pipeline.jobs.holds import holds
from pipeline.management import ManagementApi, broker_vhost, queue_consumer_timeout
from pipeline.settings import Settings

logger = logging.getLogger(__name__)


class ConsumerTimeoutCheck(Middleware):
    """Reads each consumed queue's consumer timeout from the management API when a worker boots,
    in a thread of its own so a slow API never delays the start, and logs what it finds.

    Parameters:
      settings: Give the API's URL, the assumed timeout and the time limits.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Start the check of the queues ``worker`` consumes, against what their actors declare."""
        queues = sorted({q_name(queue) for queue in worker.consumers})
        held = holds(broker, queues, worker.worker_threads, worker.queue_prefetch)
        Background("consumer-timeout-check", lambda _: self.report(queues, held)).start()

    def report(self, queues: list[str], held: Mapping[str, int] | None = None) -> None:
        """Log what :meth:`findings` finds."""
        for level, line in self.findings(queues, held):
            logger.log(level, line)

    def findings(self, queues: list[str], held: Mapping[str, int] | None = None) -> list[tuple[int, str]]:
        """Compare each queue's timeout with how long a worker may hold its deliveries.

        Parameters:
          queues: The queues consumed.
          held: Milliseconds a worker may hold a delivery of each queue (see
            :func:`~pipeline.jobs.holds.longest_hold`).

        Returns:
          Lines with their log levels (a WARNING is a timeout that needs a change).
        """
        held = held or {}
        api = ManagementApi.from_settings(self.settings)
        assumed = self.settings.rabbitmq_consumer_timeout
        lines: list[tuple[int, str]] = []
        try:
            version = api.version()
            found = {queue: queue_consumer_timeout(api.queue(broker_vhost(self.settings), queue)) for queue in queues}
        except ManagementUnavailable as exc:
            lines.append((logging.INFO, f"Consumer timeout not read from the server ({exc}); assuming {assumed} ms"))
            found = {}
            version = ""
        for queue in queues:
            limit = held.get(queue, 0)
            if queue not in found and limit >= assumed:
                lines.append(self._too_long(queue, limit, assumed, "PIPELINE_RABBITMQ_CONSUMER_TIMEOUT"))
        for queue, timeout in found.items():
            limit = held.get(queue, 0)
            if timeout is None:
                lines.append(
                    (
                        logging.INFO,
                        f"Queue {queue!r} has no consumer timeout of its own; RabbitMQ {version} does not show its "
                        f"node-wide consumer_timeout, so the time limits are held to {assumed} ms "
                        "(PIPELINE_RABBITMQ_CONSUMER_TIMEOUT): keep it equal to the server's",
                    )
                )
                if limit >= assumed:
                    lines.append(self._too_long(queue, limit, assumed, "PIPELINE_RABBITMQ_CONSUMER_TIMEOUT"))
                continue
            if timeout <= limit:
                lines.append(
                    (
                        logging.WARNING,
                        f"Queue {queue!r} has a consumer timeout of {timeout} ms on RabbitMQ, at or below the "
                        f"{limit} ms a delivery may be held unacknowledged here: RabbitMQ will close the channel "
                        "and deliver those jobs again; raise the queue's timeout or lower the time limits",
                    )
                )
            elif timeout != assumed:
                lines.append(
                    (
                        logging.WARNING,
                        f"Queue {queue!r} has a consumer timeout of {timeout} ms on RabbitMQ, not the {assumed} ms "
                        f"of PIPELINE_RABBITMQ_CONSUMER_TIMEOUT: set the setting to {timeout}",
                    )
                )
        return lines

    @staticmethod
    def _too_long(queue: str, hold: int, timeout: int, source: str) -> tuple[int, str]:
        return (
            logging.WARNING,
            f"Queue {queue!r}: a worker may hold a delivery {hold} ms (its actors' time limits and the "
            f"prefetch), at or above the consumer timeout of {timeout} ms ({source}): RabbitMQ "
            "will close the channel and deliver those jobs again, and again; lower the actor's time_limit or "
            "the prefetch, or raise the queue's consumer timeout",
        )

"""At a worker's start, compare the consumer timeout RabbitMQ applies with the one the settings
assume, so that a time limit the server would cut short is found before a job runs into it.

The settings check every time limit against ``PIPELINE_RABBITMQ_CONSUMER_TIMEOUT``; the server's
own value is what counts. RabbitMQ 3.12 and later let a queue carry its own timeout (argument
``x-consumer-timeout`` or policy key ``consumer-timeout``), which the management API shows; the
node-wide ``consumer_timeout`` of the server's config file is shown by no API, so without a
per-queue value the setting is taken at its word, and the worker says so.
"""

from __future__ import annotations

import logging
import threading

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from pipeline.errors import ManagementUnavailable
from pipeline.management import ManagementApi, broker_vhost, queue_consumer_timeout
from pipeline.queues import SLOW_QUEUE
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
        """Start the check of the queues ``worker`` consumes."""
        queues = sorted({q_name(queue) for queue in worker.consumers})
        threading.Thread(target=self.report, args=(queues,), name="consumer-timeout-check", daemon=True).start()

    def report(self, queues: list[str]) -> None:
        """Log what :meth:`findings` finds."""
        for level, line in self.findings(queues):
            logger.log(level, line)

    def findings(self, queues: list[str]) -> list[tuple[int, str]]:
        """Compare each queue's timeout with the settings.

        Returns:
          Lines with their log levels (a WARNING is a timeout that needs a change).
        """
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
        for queue, timeout in found.items():
            if timeout is None:
                lines.append(
                    (
                        logging.INFO,
                        f"Queue {queue!r} has no consumer timeout of its own; RabbitMQ {version} does not show its "
                        f"node-wide consumer_timeout, so the time limits are held to {assumed} ms "
                        "(PIPELINE_RABBITMQ_CONSUMER_TIMEOUT): keep it equal to the server's",
                    )
                )
                continue
            limit = self._longest_hold(queue)
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

    def _longest_hold(self, queue: str) -> int:
        """Milliseconds a worker may hold a delivery of ``queue``: a retry waiting out its backoff,
        or (on the slow queue) an export running to its time limit.
        """
        hold = self.settings.retry_max_backoff
        if queue == SLOW_QUEUE:
            hold = max(hold, self.settings.export_time_limit * 1000)
        return hold

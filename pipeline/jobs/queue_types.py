"""Classic or quorum queues, and what a message's priority means on each.

Classic queues take ``x-max-priority`` and serve a backlog by priority. Quorum queues (the
replicated type for clusters) take no such argument, and what they do with a message's
priority depends on the server: nothing before RabbitMQ 4.0, two levels from 4.0 (above 4 goes
first), 32 strict levels from 4.3 (a message without one counts as 4). pipeline keeps sending
each message's priority, so a server upgrade starts honouring it, and says at a worker's start
what it means on the server it reached.

pipeline creates classic queues with the second version of their storage (``x-queue-version``
2, from RabbitMQ 3.10), unless ``PIPELINE_CLASSIC_QUEUE_VERSION`` leaves it to the server.
Measured on RabbitMQ 3.10, against the first version (what a queue declared without the
argument gets there, as Dramatiq declares them), it pays off under load: a persistent message
costs the server about a quarter less work, a confirmed publish takes two thirds of the time,
and a worker drains a backlog faster. On that release a message sent while the queue is empty
and taken at once costs more (about 0.5 ms from send to delivery). A queue that already exists
without the argument is used as it is (see :func:`without_storage_version`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from pipeline.management import ManagementApi
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

#: ``PIPELINE_QUEUE_TYPE`` of replicated queues.
QUORUM = "quorum"
#: The argument that picks a classic queue's storage, and the version pipeline creates.
STORAGE_VERSION_ARGUMENT = "x-queue-version"
STORAGE_VERSION = 2


def storage_arguments(settings: Settings) -> dict[str, Any]:
    """The arguments of the settings' queue type that every queue (``.DQ`` and ``.XQ`` too)
    is created with: quorum's type, or a classic queue's storage version (none with
    ``PIPELINE_CLASSIC_QUEUE_VERSION=server``).
    """
    if settings.queue_type == QUORUM:
        return {"x-queue-type": QUORUM}
    if settings.classic_queue_version == "server":
        return {}
    return {STORAGE_VERSION_ARGUMENT: STORAGE_VERSION}


def without_storage_version(arguments: dict[str, Any], refusal: str) -> dict[str, Any] | None:
    """The arguments to declare a queue with again, once RabbitMQ refused ``arguments`` with
    ``refusal`` (a ``PRECONDITION_FAILED`` reply's text): those without the storage version when
    that is what differs (the queue was created without it, by an earlier pipeline, by Dramatiq
    or by hand, and its storage is not pipeline's to change); None when something else does.
    """
    if STORAGE_VERSION_ARGUMENT not in arguments or f"'{STORAGE_VERSION_ARGUMENT}'" not in refusal:
        return None
    return {name: value for name, value in arguments.items() if name != STORAGE_VERSION_ARGUMENT}


def queue_type_arguments(settings: Settings, queue_name: str) -> dict[str, Any]:
    """The arguments that make ``queue_name`` the queue type of the settings, with its priority
    (classic) or delivery limit (quorum).
    """
    if settings.queue_type == QUORUM:
        return storage_arguments(settings) | {"x-delivery-limit": settings.delivery_limit}
    highest = settings.max_priority(q_name(queue_name))
    return storage_arguments(settings) | ({"x-max-priority": highest} if highest else {})


def server_version(settings: Settings) -> tuple[int, ...]:
    """The version of the RabbitMQ the settings name, as numbers (``(3, 10, 8)``), as its
    management API says.

    Raises:
      ManagementUnavailable: The management API did not answer.
    """
    text = ManagementApi.from_settings(settings).version()
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def priority_meaning(settings: Settings, version: tuple[int, ...]) -> str:
    """What a message's priority does on queues of the settings' type on RabbitMQ ``version``."""
    shown = ".".join(map(str, version)) or "unknown"
    if settings.queue_type != QUORUM:
        ranges = ", ".join(f"{queue} 0..{highest}" for queue, highest in sorted(settings.queue_priorities.items()))
        return f"classic queues: a backlog is served by priority ({ranges})"
    if version < (4, 0):
        return (
            f"quorum queues on RabbitMQ {shown} have no priorities: messages are served in the order they came; "
            "their priorities are kept for a server that honours them (4.0 and later)"
        )
    if version < (4, 3):
        return f"quorum queues on RabbitMQ {shown} have two priorities: 5 and above go before 0 to 4"
    return f"quorum queues on RabbitMQ {shown} serve a backlog by priority, 0 to 31 (a message without one counts as 4)"


class QueueTypeReport(Middleware):
    """Says at a worker's start which queue type it uses and what priorities mean there.

    Parameters:
      settings: Give the queue type and the priority ranges.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Log what priorities mean on the server this worker reached."""
        try:
            version = server_version(self.settings)
        except Exception as exc:  # noqa: BLE001 - a report, never a reason not to start
            logger.info("Priorities: the RabbitMQ version could not be read (%s)", exc)
            return
        logger.info("Priorities: %s", priority_meaning(self.settings, version))

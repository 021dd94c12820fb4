"""The names of the options pipeline adds to actors and messages, and the actor options whose
values are settings (:class:`FromSettings`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.settings import get_settings

#: Message option a sender sets for the AMQP priority (higher is sooner).
PRIORITY_OPTION = "priority"
#: Actor option giving an actor's default AMQP priority; also Dramatiq's message option.
BROKER_PRIORITY_OPTION = "broker_priority"
#: Actor option naming a function that checks a message's arguments at send time.
CHECK_OPTION = "check"
#: Actor option giving the AMQP priority of messages sent with ``send_many``.
BULK_PRIORITY_OPTION = "bulk_priority"
#: Message option Dramatiq's ``Retries`` counts attempts with.
RETRIES_OPTION = "retries"
#: Message option holding a delayed message's due time (Unix milliseconds).
ETA_OPTION = "eta"
#: Message option counting the deliveries RabbitMQ repeated (a worker died holding the message).
REDELIVERIES_OPTION = "pipeline_redeliveries"
#: Message option the broker notes on a message it sends again for a retry: when the retry is
#: due (Unix milliseconds), for the ``RETRY`` record.
RETRY_DUE_OPTION = "retry_due"
#: Actor option: the keyword arguments whose values the dashboard may show (the others are shown
#: as their shapes only: a mail's context may hold a password-reset link).
SHOWN_ARGUMENTS_OPTION = "shown_arguments"
#: Actor option: the actor's jobs each send a mail, within the deployment's mail rate limit.
RATE_LIMITED_OPTION = "rate_limited"
#: Message option: when (Unix ms) a mail waiting for the rate limit is due again.
RATE_WAIT_OPTION = "pipeline_rate_wait"


@dataclasses.dataclass(frozen=True)
class FromSettings:
    """An actor option whose value is a setting's, read when the option is first asked for
    (when a worker or a send needs it), not when the actor is declared.

    Parameters:
      name: The field of :class:`~pipeline.settings.Settings`.
      factor: What the value is multiplied by (1000: seconds to milliseconds).
    """

    name: str
    factor: int = 1

    def value(self) -> Any:
        """The setting's value, times the factor."""
        return getattr(get_settings(), self.name) * self.factor

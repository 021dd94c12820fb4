"""AMQP priorities: each message gets one its queue can hold, from the sender or the actor."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from pipeline.errors import InvalidPriority, shown
from pipeline.jobs.checks import Refusal
from pipeline.jobs.options import BROKER_PRIORITY_OPTION, BULK_PRIORITY_OPTION, PRIORITY_OPTION
from pipeline.settings import Settings


class MessagePriorities(Middleware):
    """Gives every message its AMQP priority and refuses one its queue cannot hold.

    A sender passes ``priority=N`` (or Dramatiq's ``broker_priority=N``); otherwise the actor's
    ``broker_priority`` option applies (a number, or a function of the message's keyword
    arguments, e.g. to rank mails by template), else 0. Higher numbers are delivered sooner when a
    queue has a backlog.

    Parameters:
      settings: Gives each queue's ``x-max-priority``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def actor_options(self) -> set[str]:
        """Declares ``broker_priority`` (a number, or a function of the message's keyword
        arguments) and ``bulk_priority`` (the default of ``send_many``).
        """
        return {BROKER_PRIORITY_OPTION, BULK_PRIORITY_OPTION}

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Check the actor's default priorities fit its queue when the actor is declared, where
        the settings are given (the process's settings are read at the first send instead,
        which checks each message's priority, the actor's default included).

        Raises:
          InvalidPriority: A default does not fit.
        """
        if not isinstance(self.settings, Settings):
            return
        for option in (BROKER_PRIORITY_OPTION, BULK_PRIORITY_OPTION):
            default = actor.options.get(option)
            if default is not None and not callable(default):
                try:
                    self._check(actor.queue_name, default, f"actor {actor.actor_name!r}")
                except InvalidPriority as exc:
                    raise Refusal(exc) from None

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Set ``broker_priority`` from the sender's ``priority`` or the actor's default."""
        options = message.options
        if PRIORITY_OPTION in options:
            options[BROKER_PRIORITY_OPTION] = options.pop(PRIORITY_OPTION)
        if options.get(BROKER_PRIORITY_OPTION) is None:
            # A message sent by name to an actor not declared here has no default but 0.
            actor = broker.actors.get(message.actor_name)
            default = 0 if actor is None else actor.options.get(BROKER_PRIORITY_OPTION, 0)
            options[BROKER_PRIORITY_OPTION] = default(message.kwargs) if callable(default) else default
        try:
            self._check(q_name(message.queue_name), options[BROKER_PRIORITY_OPTION], f"message {message.message_id}")
        except InvalidPriority as exc:
            raise Refusal(exc) from None

    def _check(self, queue_name: str, priority: Any, owner: str) -> None:
        highest = self.settings.max_priority(queue_name)
        whole = isinstance(priority, int) and not isinstance(priority, bool)
        if not whole or not 0 <= priority <= highest:
            why = "is" if whole else "is not a whole number, so"
            raise InvalidPriority(
                f"{owner}: priority {shown(priority)} {why} outside 0..{highest}, the range queue "
                f"{queue_name!r} is declared with (PIPELINE_QUEUE_PRIORITIES)"
            )

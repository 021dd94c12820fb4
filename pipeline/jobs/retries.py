"""Retries only of what can pass.

A failure is retried only when it is a passing condition: a
:class:`~pipeline.errors.TransientError` (a service unavailable, a timeout, a 4xx reply), a
builtin ``ConnectionError`` or ``TimeoutError``, or an exception type the actor declares with
``@actor(retry_on=(...))``. Anything else would happen again with the same message (bad input,
a bug, a value out of range): the job fails at its first attempt and is dead-lettered.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Retries

from pipeline.errors import InvalidActor, JobStopped, TransientError, shown
from pipeline.jobs.checks import Refusal
from pipeline.settings import Settings

#: Actor option: more exception types that count as passing for that actor.
RETRY_ON_OPTION = "retry_on"
#: What a declared ``retry_on`` is tried on when the actor is declared.
_PROBE = Exception()
#: Exceptions that may pass whatever the actor: trouble with a service, or time running out.
PASSING = (TransientError, ConnectionError, TimeoutError)


class PipelineRetries(Retries):
    """Dramatiq's ``Retries`` (backoff, ``max_retries``, ``throws``) for passing failures only.

    Any other exception fails the message at once, so it is dead-lettered, and a
    :class:`~pipeline.errors.JobStopped` (the actor stopped its revoked job) acknowledges it.
    The defaults an actor does not override come from ``settings`` when first needed
    (``PIPELINE_MAX_RETRIES``, ``PIPELINE_RETRY_MIN_BACKOFF``, ``PIPELINE_RETRY_MAX_BACKOFF``).

    Parameters:
      settings: Give the retry count and the backoff.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    # Dramatiq's Retries reads these attributes as it decides; they are the settings' values,
    # read then. What its constructor assigns them is not kept.
    max_retries = property(lambda self: self.settings.max_retries, lambda self, value: None)
    min_backoff = property(lambda self: self.settings.retry_min_backoff, lambda self, value: None)
    max_backoff = property(lambda self: self.settings.retry_max_backoff, lambda self, value: None)

    @property
    def actor_options(self) -> set[str]:
        """Dramatiq's retry options, and ``retry_on``."""
        return {*super().actor_options, RETRY_ON_OPTION}

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Decide between retrying, failing and dropping a message whose actor raised."""
        if exception is None or isinstance(exception, JobStopped):
            return
        if not self.may_pass(broker, message, exception):
            message.fail()
            return
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except Exception:
            # The retry could not be sent: dead-letter the message rather than ack and lose it.
            self.logger.exception("Could not schedule a retry of message %r.", message.message_id)
            message.fail()

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Refuse a ``retry_on`` that ``isinstance`` cannot take (a type, a tuple or a union of
        types): every failure would raise again in the retry decision, and the job would be
        acknowledged with neither a retry nor a failure.

        Raises:
          InvalidActor: Through :class:`~pipeline.jobs.checks.Refusal`.
        """
        declared = actor.options.get(RETRY_ON_OPTION)
        if declared is None:
            return
        try:
            isinstance(_PROBE, declared)
        except TypeError:
            problem = f"option retry_on {shown(declared)} is not an exception type, or a tuple of them"
            raise Refusal(InvalidActor(f"actor {actor.actor_name!r}: {problem}")) from None

    @staticmethod
    def may_pass(broker: dramatiq.Broker, message: MessageProxy, exception: BaseException) -> bool:
        """Whether ``exception`` is a passing condition for the message's actor."""
        if isinstance(exception, PASSING):
            return True
        try:
            declared = broker.get_actor(message.actor_name).options.get(RETRY_ON_OPTION, ())
        except dramatiq.errors.ActorNotFound:
            return False
        return bool(declared) and isinstance(exception, declared)

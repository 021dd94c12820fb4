"""Send-time checks: a message that can never run is refused in the sender, before it is queued.

Dramatiq lets only a ``MiddlewareError`` out of a ``before_*`` hook (anything else is logged
and swallowed), so a check raises :class:`Refusal` around the pipeline error it means, and the
actor class and the broker raise that error to the caller (:func:`refusals_raised`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, MiddlewareError

from pipeline.errors import InvalidMessage, PermanentError, PipelineError
from pipeline.jobs.options import CHECK_OPTION, RETRIES_OPTION


class Refusal(MiddlewareError):
    """Carries the pipeline error that refuses a message or a declaration out of Dramatiq's hooks.

    Parameters:
      error: What the caller is to see.
    """

    def __init__(self, error: PipelineError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def refusals_raised() -> Iterator[None]:
    """Raise the pipeline error a :class:`Refusal` carries out of the block, in its place."""
    try:
        yield
    except Refusal as refused:
        raise refused.error from None


def is_retry(message: dramatiq.Message[Any] | MessageProxy) -> bool:
    """True for a message the Retries middleware is sending again."""
    return bool(message.options.get(RETRIES_OPTION))


class MessageChecks(Middleware):
    """Runs an actor's ``check`` on a message's arguments before it is sent.

    ``@actor(check=function)`` makes ``send()`` call ``function(*args, **kwargs)`` first; a
    :class:`~pipeline.errors.PermanentError` it raises reaches the sender as
    :class:`~pipeline.errors.InvalidMessage` and nothing is queued, so bad input fails at once,
    in the caller, rather than later in a worker.
    """

    @property
    def actor_options(self) -> set[str]:
        """Declares ``check``."""
        return {CHECK_OPTION}

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Check a newly sent message (retries were checked when first sent)."""
        if is_retry(message):
            return
        check = broker.get_actor(message.actor_name).options.get(CHECK_OPTION)
        if check is None:
            return
        try:
            check(*message.args, **message.kwargs)
        except PermanentError as exc:
            refusal = InvalidMessage(f"{message.actor_name}: {exc}")
            refusal.__cause__ = exc
            raise Refusal(refusal) from exc

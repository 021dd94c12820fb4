"""Retries that never repeat what cannot pass."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Retries

from pipeline.errors import JobRevoked, PermanentError


class PipelineRetries(Retries):
    """Dramatiq's ``Retries``, except that a :class:`~pipeline.errors.PermanentError` is failed
    at once (and so dead-lettered) and a :class:`~pipeline.errors.JobRevoked` is dropped
    (acknowledged, neither retried nor dead-lettered).
    """

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Decide between retrying, failing and dropping a message whose actor raised."""
        if isinstance(exception, JobRevoked):
            return
        if isinstance(exception, PermanentError):
            self.logger.info("Failing message %r: %s", message.message_id, exception)
            message.fail()
            return
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except Exception:
            # The retry could not be sent: dead-letter the message rather than ack and lose it.
            self.logger.exception("Could not schedule a retry of message %r.", message.message_id)
            message.fail()

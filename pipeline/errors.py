"""The one exception hierarchy of pipeline.

Everything pipeline raises on purpose derives from :class:`PipelineError`. Beneath it,
:class:`PermanentError` marks bad input that no retry can fix (the job is failed at once and
dead-lettered) and :class:`TransientError` marks trouble that may pass (the job is retried
with backoff). Library exceptions (pika, redis-py, smtplib) are translated into these at the
edge, so a caller catches one family.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from typing import Any


class _Shown(reprlib.Repr):
    """Reprs shortened (a 5,000-character name, a long list), so that an error message stays
    readable and a log line stays a line; an integer too long for Python to write out (over
    ``sys.get_int_max_str_digits()`` digits, whose repr raises ``ValueError``) by its length.
    """

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:
            digits = int(abs(x).bit_length() * math.log10(2)) + 1
            return f"<an integer of about {digits:,} digits>"


#: How an error message shows a value a caller gave (see :class:`_Shown`).
_SHOWN = _Shown()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 6


def shown(value: object) -> str:
    """``value`` as an error message shows it: its repr, shortened to a readable length."""
    return _SHOWN.repr(value)


def not_text(error: UnicodeEncodeError) -> str:
    """What an error message says of the character UTF-8 could not encode: in a ``str``, only
    a lone surrogate (``U+D800, a lone surrogate, which is not text``).
    """
    return f"U+{ord(error.object[error.start]):04X}, a lone surrogate, which is not text (UTF-8 cannot encode it)"


class PipelineError(Exception):
    """Base class of every error pipeline raises.

    Attributes:
      sent: The messages ``send_many`` had sent before the error stopped it (empty elsewhere):
        RabbitMQ has them, with their records.
    """

    sent: Sequence[Any] = ()


class PermanentError(PipelineError):
    """Bad input or a refusal that retrying cannot fix: the job fails at once, never retried."""


class TransientError(PipelineError):
    """A failure that may pass (a service down, a timeout): the job is retried with backoff."""


class SettingsError(PermanentError):
    """A ``PIPELINE_*`` environment variable holds a value that cannot be used.

    Parameters:
      variable: The environment variable's name.
      value: The offending value, as read.
      reason: What is wrong with it.
    """

    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(f"{variable}={value!r}: {reason}")
        self.variable = variable
        self.value = value


class InvalidPriority(PermanentError):
    """A message's priority is outside what its queue was declared with; nothing was queued."""


class InvalidActor(PermanentError, ValueError):
    """An actor's declaration no worker could follow (an option of the wrong kind): raised where
    it is declared, as Dramatiq raises for a bad queue name.
    """


class InvalidMessage(PermanentError):
    """A message's arguments failed its actor's send-time check; nothing was queued."""


class InvalidIdempotencyKey(InvalidMessage):
    """A send's idempotency key is empty, too long or holds control characters; nothing was queued."""


class MessageTooLarge(InvalidMessage):
    """RabbitMQ refused a message for its size (its ``max_message_size``); nothing was queued."""


class UndecodableMessage(PermanentError):
    """A delivered body is not a message Dramatiq can decode: it was dead-lettered unrun."""


class QueueMismatch(PermanentError):
    """A queue already exists in RabbitMQ with other arguments than the settings ask for.

    Parameters:
      message: What differs, and what to do.
      reply_text: RabbitMQ's refusal (``PRECONDITION_FAILED - inequivalent arg ...``).
    """

    def __init__(self, message: str, reply_text: str = "") -> None:
        super().__init__(message)
        self.reply_text = reply_text


class BrokerUnavailable(TransientError):
    """RabbitMQ could not be reached, or refused the message, after the broker's retries."""


class ManagementUnavailable(TransientError):
    """RabbitMQ's management HTTP API could not be reached or refused a request."""


class PublishOutcomeUnknown(PipelineError):
    """The connection to RabbitMQ broke while a message was being published: RabbitMQ may have
    taken it or not. Sending again may run the job twice; look at
    ``AsyncResult(error.message_id)`` first (its record reads ``QUEUED`` or later once a worker
    or the sender wrote it).

    Parameters:
      message: What happened.
      message_id: The id of the message whose fate is unknown.
    """

    def __init__(self, message: str, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class ResultBackendUnavailable(TransientError):
    """Redis, which holds the job records, could not be reached."""


class JobTimeout(PipelineError, TimeoutError):
    """``AsyncResult.get`` ran out of time before the job finished."""


class InvalidTimeout(PermanentError, ValueError):
    """A wait's ``timeout`` is not a number of seconds (NaN, text); nothing was waited for."""


class InvalidProgress(PermanentError, ValueError):
    """A progress report's ``done``, ``total`` or ``phase`` is not what a report holds; the
    report was not recorded.
    """


class InvalidJobId(PermanentError, ValueError):
    """A job id is not of the form pipeline issues (a UUID); nothing was looked up."""


class JobRevoked(PermanentError):
    """The job was revoked: raised by ``AsyncResult.get``.

    An actor that waits on another job and gets this error fails with it, for good.
    """


class JobStopped(PipelineError):
    """Raised inside a running actor to stop its own job, which was revoked (see
    :func:`pipeline.results.stop_if_revoked`); the message is acknowledged and the record stays
    ``REVOKED``. A client never sees it.
    """


class JobInterrupted(JobStopped):
    """Raised inside a running actor whose worker is shutting down and asked it to stop (see
    :func:`pipeline.results.stop_if_revoked`): not a failure. The record reads ``INTERRUPTED``,
    no retry is spent, and the message goes back to its queue for the next attempt.
    """


class JobFailed(PermanentError):
    """A job ended in ``FAILURE``; raised by ``AsyncResult.get`` when the remote error's type
    cannot be rebuilt as one of pipeline's own errors.

    Parameters:
      type_name: The qualified name of the exception raised in the worker.
      message: Its message.
      traceback: The worker-side traceback, as text.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback


class MailError(PermanentError):
    """A mail cannot be built: unknown template, missing variable, bad address, bad header."""


class HeaderInjection(MailError):
    """A header value holds a line break, which would let it add headers of its own."""


class SmtpRejected(PermanentError):
    """The SMTP server refused the mail with a 5xx reply (or the login): retrying will not help."""


class SmtpUnavailable(TransientError):
    """The SMTP server could not be reached, timed out, or answered 4xx: worth retrying."""


class SmtpThrottled(SmtpUnavailable):
    """The relay asked to slow down (421, or 450/451 naming a rate or too many connections):
    retried, and every worker of the deployment pauses its mail a moment.
    """


class DeliveryUncertain(PermanentError):
    """The server may have accepted the mail, so it is not sent again.

    The connection broke after the mail's data was sent, or an earlier attempt of the same job
    was interrupted mid-send.
    """


class InvalidOrder(PermanentError):
    """An order does not fit the schema; the message names the row, the field and the value."""


class SourceError(PermanentError):
    """An export's source cannot be used: too large inline, a bad path, a broken plug-in."""

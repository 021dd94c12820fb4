"""The base of pipeline's consumers: each wraps the queue's consumer (Dramatiq's, or another
wrapper) and passes on whatever it does not change.
"""

from __future__ import annotations

from typing import Any

import dramatiq


class WrappedConsumer(dramatiq.Consumer):
    """A consumer that does what ``inner`` does; subclasses change a part of it.

    Parameters:
      inner: The queue's consumer.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> WrappedConsumer:
        return self

    def __next__(self) -> Any:
        """The inner consumer's next delivery (or None when none came within its timeout)."""
        return next(self.inner)

    def ack(self, message: Any) -> None:
        """The inner consumer's ack."""
        self.inner.ack(message)

    def nack(self, message: Any) -> None:
        """The inner consumer's nack (dead-letters the message)."""
        self.inner.nack(message)

    def requeue(self, messages: Any) -> None:
        """The inner consumer's requeue."""
        self.inner.requeue(messages)

    def close(self) -> None:
        """Close the inner consumer."""
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class DeadLetterQueueKept:
    """A consumer's channel that declares the queue's dead-letter queue before each rejection.

    RabbitMQ drops, without a word, a rejected message whose dead-letter queue does not exist
    (deleted from the management UI while the worker ran, say). Declared first, with the
    arguments it is made with, it is there again: a round trip on the rare rejection, and
    nothing lost. It runs on the connection's thread, where Dramatiq's consumer rejects (those
    of the consumer's ``nack`` and of a body it cannot decode alike).

    Parameters:
      channel: The consumer's ``BlockingChannel``.
      dead_letters: The queue's ``.XQ``.
      arguments: The arguments the ``.XQ`` is declared with.
    """

    def __init__(self, channel: Any, dead_letters: str, arguments: dict[str, Any]) -> None:
        self._channel = channel
        self._dead_letters = dead_letters
        self._arguments = arguments

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True) -> None:
        """Reject ``delivery_tag``; without ``requeue``, once its dead-letter queue exists."""
        if not requeue:
            self._channel.queue_declare(queue=self._dead_letters, durable=True, arguments=self._arguments)
        self._channel.basic_nack(delivery_tag=delivery_tag, multiple=multiple, requeue=requeue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

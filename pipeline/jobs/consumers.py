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

"""The actor of ``latency_parts.py``: a no-op that notes when it ran, a middleware that notes when
a worker thread took its message, and a note of when Dramatiq's RabbitMQ consumer received it
(before pipeline's consumer looks at it), on ``bench_actors``' broker (plain Dramatiq or
pipeline).

Each worker process appends ``kind n monotonic-seconds`` lines to a file of its own in the
folder ``BENCH_STAMPS`` names; the clock is the machine's, shared by every process.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import IO, Any

import dramatiq
from bench_actors import QUEUE, broker, declare, options
from dramatiq.brokers.rabbitmq import RabbitmqBroker

_file: list[IO[str]] = []


def note(kind: str, n: object) -> None:
    """Append one stamp to this process's file."""
    if not _file:
        folder = os.environ["BENCH_STAMPS"]
        _file.append(open(os.path.join(folder, f"{os.getpid()}.txt"), "a", buffering=1))  # noqa: SIM115
    _file[0].write(f"{kind} {n} {time.monotonic()}\n")


class TakenAt(dramatiq.Middleware):
    """Notes when a worker thread takes a message, before any other middleware sees it."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        note("taken", message.args[0])


broker.add_middleware(TakenAt(), before=type(broker.middleware[0]))

#: The argument of a ``stamp`` message, read from its body without decoding it whole.
_STAMP_ARGUMENT = re.compile(rb'"args":\[(\d+)\]')


class ReceivedAt:
    """Dramatiq's consumer's deliveries (pika's ``(method, properties, body)``), noting when each
    ``stamp`` message arrives: the same moment in both systems, since pipeline's consumer reads
    them from Dramatiq's.
    """

    def __init__(self, deliveries: Iterator[Any]) -> None:
        self.deliveries = deliveries

    def __iter__(self) -> ReceivedAt:
        return self

    def __next__(self) -> Any:
        delivery = next(self.deliveries)
        body = delivery[2]
        found = _STAMP_ARGUMENT.search(body) if body else None
        if found is not None:
            note("received", int(found.group(1)))
        return delivery


_consume = RabbitmqBroker.consume


def consume(self: RabbitmqBroker, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
    """Dramatiq's consumer, its deliveries noted as they arrive (see :class:`ReceivedAt`)."""
    consumer = _consume(self, queue_name, prefetch, timeout)
    consumer.iterator = ReceivedAt(consumer.iterator)
    return consumer


# Dramatiq's own consume, which pipeline's broker calls for the consumer it wraps.
RabbitmqBroker.consume = consume  # type: ignore[method-assign]


@declare(queue_name=QUEUE, max_retries=0, time_limit=60_000, **options)
def stamp(n: int) -> int:
    """Note the run and return ``n``."""
    note("ran", n)
    return n

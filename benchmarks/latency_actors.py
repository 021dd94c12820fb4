"""The actor of ``latency_parts.py``: a no-op that notes when it ran, and a middleware that notes
when a worker thread took its message, on ``bench_actors``' broker (plain Dramatiq or pipeline).

Each worker process appends ``kind n monotonic-seconds`` lines to a file of its own in the
folder ``BENCH_STAMPS`` names; the clock is the machine's, shared by every process.
"""

from __future__ import annotations

import os
import time
from typing import IO, Any

import dramatiq
from bench_actors import QUEUE, broker, declare, options

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


@declare(queue_name=QUEUE, max_retries=0, time_limit=60_000, **options)
def stamp(n: int) -> int:
    """Note the run and return ``n``."""
    note("ran", n)
    return n

"""Another service's actor of short jobs, declared outside pipeline with pipeline's decorator: a
text-message sender on a queue of its own, with a time limit of half a minute.

Nothing in pipeline names it: a worker prefetches four of its messages per thread because of
what it declares.
"""

from __future__ import annotations

import time

from pipeline.actors import actor
from pipeline.settings import get_settings
from pipeline.store.connection import get_redis

#: The queue of the text-message service.
TEXT_QUEUE = "pipeline-test-texts"
#: Milliseconds a text may take.
TEXT_TIME_LIMIT = 30_000


def gate_key(gate: str) -> str:
    """The Redis key that opens ``gate`` once it exists."""
    return f"{get_settings().namespace}:text-gate:{gate}"


@actor(queue_name=TEXT_QUEUE, time_limit=TEXT_TIME_LIMIT, max_retries=0)
def send_text(number: int, gate: str = "") -> int:
    """Send text ``number``, first waiting (20 s at most) until ``gate`` opens, when one is named."""
    waited = time.monotonic() + 20
    while gate and not get_redis().client.exists(gate_key(gate)) and time.monotonic() < waited:
        time.sleep(0.02)
    return number

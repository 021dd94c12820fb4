"""The actors of pipeline. Workers run ``dramatiq pipeline.actors --queues QUEUE``; other
services ``from pipeline.actors import ...`` and call ``.send()``.

Each actor is a thin declaration (queue, priority, retries, time limit) around a call into a
domain module that knows nothing of Dramatiq.
"""

from __future__ import annotations

import pipeline.broker  # noqa: F401 - sets the global broker before any actor is declared
from pipeline.actor import actor
from pipeline.queues import DEFAULT_QUEUE


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def ping(payload: object = None) -> dict[str, object]:
    """Answer at once with what it was sent: a probe that the whole path works.

    Returns:
      ``{"pong": payload}``.
    """
    return {"pong": payload}

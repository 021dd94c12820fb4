"""The audit list of the dashboard's write actions: who did what, when, to which jobs."""

from __future__ import annotations

import json
from typing import Any, cast

from pipeline.store.connection import RedisConnection
from pipeline.timestamps import now_iso

#: Entries kept, newest first.
AUDIT_KEPT = 10_000


class AuditLog:
    """The audit list of one deployment.

    Parameters:
      redis: The Redis of the records.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis

    def add(self, who: str, what: str, jobs: list[str], detail: str = "") -> None:
        """Note an action (``who`` did ``what`` to ``jobs``).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        entry = json.dumps({"who": who, "what": what, "when": now_iso(), "jobs": jobs, "detail": detail})
        key = self.redis.keys.audit
        with self.redis.translated():
            pipe = self.redis.client.pipeline(transaction=True)
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, AUDIT_KEPT - 1)
            pipe.execute()

    def latest(self, count: int = 50) -> list[dict[str, Any]]:
        """The newest ``count`` entries, newest first."""
        with self.redis.translated():
            raw = cast("list[str]", self.redis.client.lrange(self.redis.keys.audit, 0, count - 1))
        return [json.loads(entry) for entry in raw]

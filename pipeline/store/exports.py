"""The memory of recent exports, so that an identical request gets the earlier file."""

from __future__ import annotations

import json
from typing import Any, cast

from pipeline.store.connection import RedisConnection


class ExportMemory:
    """Pointers of recent exports by request digest, each kept for the reuse window.

    Parameters:
      redis: The Redis of the job records.
      window: Seconds a pointer is remembered (``PIPELINE_EXPORT_REUSE_WINDOW``).

    Every method raises ``ResultBackendUnavailable`` when Redis is unreachable.
    """

    def __init__(self, redis: RedisConnection, window: int) -> None:
        self.redis = redis
        self.window = window

    def recall(self, digest: str) -> dict[str, Any] | None:
        """The pointer remembered for the request ``digest``, if any."""
        with self.redis.translated():
            stored = cast("str | None", self.redis.client.get(self.redis.keys.export(digest)))
        return None if stored is None else cast("dict[str, Any]", json.loads(stored))

    def remember(self, digest: str, pointer: dict[str, Any]) -> None:
        """Remember ``pointer`` for the request ``digest``."""
        with self.redis.translated():
            self.redis.client.set(self.redis.keys.export(digest), json.dumps(pointer), ex=self.window)

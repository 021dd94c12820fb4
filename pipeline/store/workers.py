"""The worker processes alive, from the heartbeat each writes to Redis, and requests to go quiet.

Each worker process writes its entry (host, pid, queues, threads, jobs in flight, when it
started, its last beat) every :data:`BEAT_EVERY` seconds; one silent for three beats is shown as
lost. ``pipeline workers`` lists them, and ``pipeline workers quiet`` asks them to take no more
deliveries: a worker reads the request at its next beat.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Any, cast

from pipeline.store.connection import RedisConnection

#: Seconds between two heartbeats of a worker process.
BEAT_EVERY = 2.0
#: Beats missed before a worker is shown as lost.
LOST_AFTER_BEATS = 3
#: Seconds after which a silent worker's entry is dropped.
FORGET_AFTER = 3600
#: Seconds a quiet request is kept.
QUIET_REQUEST_TTL = 86_400


def this_worker_id() -> str:
    """The id of this process as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass
class WorkerEntry:
    """A worker process as its last heartbeat describes it (times in Unix seconds)."""

    id: str
    host: str
    pid: int
    queues: list[str]
    threads: int
    in_flight: int
    started_at: float
    beat_at: float
    quiet: bool = False

    @property
    def lost(self) -> bool:
        """Silent for three beats or more."""
        return time.time() - self.beat_at > BEAT_EVERY * LOST_AFTER_BEATS

    def to_json(self) -> str:
        """The entry as stored."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> WorkerEntry:
        """An entry as stored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in fields})


class WorkerRegistry:
    """The heartbeats and quiet requests of one deployment's workers.

    Parameters:
      redis: The Redis of the records.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis

    def beat(self, entry: WorkerEntry) -> bool:
        """Write ``entry`` (its ``beat_at`` set to now); True when this worker was asked to go quiet.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        entry.beat_at = time.time()
        keys = self.redis.keys
        with self.redis.translated():
            pipe = self.redis.client.pipeline(transaction=False)
            pipe.hset(keys.workers, entry.id, entry.to_json())
            pipe.hget(keys.quiet_requests, entry.id)
            _, requested = pipe.execute()
        return requested is not None and float(requested) == entry.started_at

    def leave(self, worker_id: str) -> None:
        """Remove a worker's entry (it stopped), giving Redis
        :data:`~pipeline.store.connection.BRIEF_WAIT` seconds at most: a stopping worker does
        not wait on Redis past its grace, and an entry left behind shows as lost.
        """
        with self.redis.translated():
            self.redis.brief_client.hdel(self.redis.keys.workers, worker_id)

    def alive(self) -> list[WorkerEntry]:
        """Every worker with an entry, lost ones included, oldest first; entries silent for an
        hour are dropped.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        with self.redis.translated():
            raw = cast("dict[str, str]", self.redis.client.hgetall(self.redis.keys.workers))
        entries, stale = [], []
        for worker_id, value in raw.items():
            try:
                entry = WorkerEntry.from_json(value)
            except (ValueError, TypeError):
                stale.append(worker_id)
                continue
            if time.time() - entry.beat_at > FORGET_AFTER:
                stale.append(worker_id)
            else:
                entries.append(entry)
        if stale:
            with self.redis.translated():
                self.redis.client.hdel(self.redis.keys.workers, *stale)
        return sorted(entries, key=lambda e: e.started_at)

    def ask_quiet(self, entries: list[WorkerEntry]) -> None:
        """Ask each of ``entries`` to take no more deliveries, from its next beat.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        if not entries:
            return
        key = self.redis.keys.quiet_requests
        with self.redis.translated():
            pipe = self.redis.client.pipeline(transaction=True)
            pipe.hset(key, mapping={e.id: repr(e.started_at) for e in entries})
            pipe.expire(key, QUIET_REQUEST_TTL)
            pipe.execute()


def entry_fields(entry: WorkerEntry) -> dict[str, Any]:
    """An entry as a JSON-safe mapping, with whether it is lost."""
    return {**dataclasses.asdict(entry), "lost": entry.lost}

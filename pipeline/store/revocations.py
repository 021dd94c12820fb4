"""Revocations, known to every worker process without a Redis read per message.

Revoking a job writes its record ``REVOKED`` and also adds its id to the sorted set
``<namespace>:revoked`` (scored by when the entry may be forgotten) and announces it on the
channel ``<namespace>:revocations``. Each worker process runs a :class:`RevocationWatcher`: a
thread that subscribes to the channel, then loads the set, so the process knows every
revocation made before it started and learns of new ones within a moment. A worker can then
skip a revoked message, and a running job can check whether to stop, from memory.

This is Celery's model (revokes broadcast to workers, kept in memory), made persistent by the
sorted set: a worker started after the revoke still knows of it.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from pipeline.background import Background
from pipeline.settings import mask_url
from pipeline.store.connection import RedisConnection

#: Seconds before a watcher whose connection broke first tries again; doubles up to the next.
RECONNECT_DELAY = 0.5
#: Seconds between reconnection attempts at most.
MAX_RECONNECT_DELAY = 30.0
#: Seconds a watcher waits for a message before checking whether it should stop.
POLL_SLICE = 1.0
#: Seconds ``stop()`` waits for the watching thread (a daemon: it ends with the process anyway).
STOP_WAIT = 0.2
#: Seconds between two sweeps of expired revocations from a watcher's memory.
SWEEP_INTERVAL = 60.0

logger = logging.getLogger(__name__)


_current: RevocationWatcher | None = None


def current_watcher() -> RevocationWatcher | None:
    """The running watcher of this process, if it has one (worker processes do)."""
    watcher = _current
    return watcher if watcher is not None and watcher.running else None


def announce(redis: RedisConnection, message_id: str) -> None:
    """Publish that ``message_id`` was revoked: into the sorted set, and to running watchers.

    It is remembered for the records' TTL.

    Raises:
      ResultBackendUnavailable: Redis failed.
    """
    now = time.time()
    ttl = redis.settings.result_ttl
    revoked = redis.keys.revoked
    with redis.translated():
        pipe = redis.client.pipeline(transaction=False)
        pipe.zadd(revoked, {message_id: now + ttl})
        pipe.zremrangebyscore(revoked, "-inf", now)
        pipe.expire(revoked, ttl)
        pipe.publish(redis.keys.revocations, message_id)
        pipe.execute()


class RevocationWatcher:
    """Keeps the set of revoked message ids of one worker process up to date.

    Parameters:
      redis: The Redis of the job records.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        self._revoked: dict[str, float] = {}
        self._ready = threading.Event()
        self._background = Background("pipeline-revocations", self._watch)

    @property
    def running(self) -> bool:
        """True once the watcher has loaded the revocations and listens for new ones."""
        return self._ready.is_set() and self._background.running

    def start(self, timeout: float = 10.0) -> None:
        """Start the watching thread and wait until it knows every earlier revocation.

        It becomes the process's :func:`current_watcher`. If Redis does not answer within
        ``timeout`` the thread goes on trying; meanwhile :attr:`running` is False and callers
        ask Redis directly.
        """
        global _current
        if self._background.running:
            return
        self._background.start()
        _current = self
        self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop the watching thread."""
        global _current
        if _current is self:
            _current = None
        self._background.stop(STOP_WAIT)
        self._ready.clear()

    @property
    def ttl(self) -> int:
        """Seconds a revocation is remembered: as long as a record lives."""
        return int(self.redis.settings.result_ttl)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._revoked

    def _watch(self, stop: threading.Event) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        delay = RECONNECT_DELAY
        client = self.redis.client
        while not stop.is_set():
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                # Subscribe first, then load: a revocation made in between is seen twice, never missed.
                pubsub.subscribe(self.redis.keys.revocations)
                now = time.time()
                loaded = client.zrangebyscore(self.redis.keys.revoked, now, "+inf", withscores=True)
                self._revoked.update({_text(member): score for member, score in loaded})  # type: ignore[union-attr]
                if delay > RECONNECT_DELAY:
                    logger.warning("Revocation watcher reached Redis at %s again.", self._url)
                delay = RECONNECT_DELAY
                self._ready.set()
                while not stop.is_set():
                    message = pubsub.get_message(timeout=POLL_SLICE)
                    if message is not None:
                        self._revoked[_text(message["data"])] = time.time() + self.ttl
                    if time.monotonic() > next_sweep:
                        next_sweep = time.monotonic() + SWEEP_INTERVAL
                        now = time.time()
                        self._revoked = {key: until for key, until in self._revoked.items() if until > now}
            except redis.RedisError as exc:
                self._ready.clear()
                # Once per outage at WARNING, then quietly, backing off: a Redis that is down
                # for an hour must not fill the log.
                log = logger.warning if delay == RECONNECT_DELAY else logger.debug
                log(
                    "Revocation watcher lost Redis at %s (%s); retrying every %.0f s at most.",
                    self._url,
                    exc,
                    MAX_RECONNECT_DELAY,
                )
                stop.wait(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
            finally:
                pubsub.close()

    @property
    def _url(self) -> str:
        return mask_url(self.redis.settings.redis_url)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

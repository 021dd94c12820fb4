"""Revocations, known to every worker process without a Redis read per message.

Revoking a job writes its record ``REVOKED`` and also adds its id to the sorted set
``pipeline:revoked`` (scored by when the entry may be forgotten) and announces it on the
channel ``pipeline:revocations``. Each worker process runs a :class:`RevocationWatcher`: a
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

#: Sorted set of revoked message ids, each scored with the Unix time it may be forgotten.
REVOKED_KEY = "pipeline:revoked"
#: Channel on which each revocation's message id is announced.
REVOCATIONS_CHANNEL = "pipeline:revocations"
#: Seconds between two reconnection attempts of a watcher whose connection broke.
RECONNECT_DELAY = 0.5
#: Seconds a watcher waits for a message before checking whether it should stop.
POLL_SLICE = 1.0
#: Seconds between two sweeps of expired revocations from a watcher's memory.
SWEEP_INTERVAL = 60.0

logger = logging.getLogger(__name__)


_current: RevocationWatcher | None = None


def current_watcher() -> RevocationWatcher | None:
    """The running watcher of this process, if it has one (worker processes do)."""
    watcher = _current
    return watcher if watcher is not None and watcher.running else None


def announce(client: redis.Redis, message_id: str, ttl: int) -> None:
    """Publish that ``message_id`` was revoked: into the sorted set, and to running watchers.

    Parameters:
      client: The Redis of the job records.
      message_id: The revoked job.
      ttl: Seconds the revocation is remembered (the records' TTL).
    """
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zadd(REVOKED_KEY, {message_id: now + ttl})
    pipe.zremrangebyscore(REVOKED_KEY, "-inf", now)
    pipe.expire(REVOKED_KEY, ttl)
    pipe.publish(REVOCATIONS_CHANNEL, message_id)
    pipe.execute()


class RevocationWatcher:
    """Keeps the set of revoked message ids of one worker process up to date.

    Parameters:
      client: The Redis of the job records.
      ttl: Seconds a revocation is remembered (the records' TTL).
    """

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._revoked: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True once the watcher has loaded the revocations and listens for new ones."""
        return self._ready.is_set() and self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Start the watching thread and wait until it knows every earlier revocation.

        It becomes the process's :func:`current_watcher`. If Redis does not answer within
        ``timeout`` the thread goes on trying; meanwhile :attr:`running` is False and callers
        ask Redis directly.
        """
        global _current
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="pipeline-revocations", daemon=True)
        self._thread.start()
        _current = self
        self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop the watching thread."""
        global _current
        if _current is self:
            _current = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_SLICE * 3)
        self._thread = None
        self._ready.clear()

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._revoked

    def _watch(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                # Subscribe first, then load: a revocation made in between is seen twice, never missed.
                pubsub.subscribe(REVOCATIONS_CHANNEL)
                now = time.time()
                loaded = self.client.zrangebyscore(REVOKED_KEY, now, "+inf", withscores=True)
                self._revoked.update({_text(member): score for member, score in loaded})
                self._ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_SLICE)
                    if message is not None:
                        self._revoked[_text(message["data"])] = time.time() + self.ttl
                    if time.monotonic() > next_sweep:
                        next_sweep = time.monotonic() + SWEEP_INTERVAL
                        now = time.time()
                        self._revoked = {key: until for key, until in self._revoked.items() if until > now}
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._ready.clear()
                logger.warning("Revocation watcher lost Redis (%s); reconnecting.", exc)
                self._stop.wait(RECONNECT_DELAY)
            finally:
                pubsub.close()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

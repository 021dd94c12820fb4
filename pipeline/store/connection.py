"""The Redis client of the store, and the translation of redis-py's errors into pipeline's.

Nothing connects until the first command. Every command runs with the connect and socket
timeouts from the settings, so a frozen Redis costs a caller seconds, never forever.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import redis

from pipeline.errors import ResultBackendUnavailable
from pipeline.settings import PROCESS_SETTINGS, Settings, mask_url
from pipeline.store.keys import Keys
from pipeline.store.redis_url import make_client

#: Seconds allowed past the timeouts for an answer's own travel.
ANSWER_MARGIN = 0.5
#: Seconds a caller gives Redis, at most, for what it can go on without: the answer to a send's
#: ``QUEUED`` write once RabbitMQ has the message, a delayed message kept until due (else it
#: goes to the queue's ``.DQ``), what a stopping worker still writes once its grace is over.
BRIEF_WAIT = 0.25


class RedisConnection:
    """The Redis of one deployment: its client (a connection pool), key layout and settings.

    Parameters:
      settings: Gives ``redis_url``, the timeouts, the namespace and the TTLs.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @functools.cached_property
    def keys(self) -> Keys:
        """The key layout of the settings' namespace."""
        return Keys(self.settings.namespace)

    @functools.cached_property
    def client(self) -> redis.Redis:
        """The redis-py client, created on first use (see :mod:`pipeline.store.redis_url`)."""
        return make_client(self.settings)

    @property
    def answer_wait(self) -> float:
        """Seconds a command's answer is awaited: as long as redis-py may take to connect, send
        it and try once more on a new connection.
        """
        return self.settings.redis_connect_timeout + 2 * self.settings.redis_socket_timeout + ANSWER_MARGIN

    @functools.cached_property
    def brief_client(self) -> redis.Redis:
        """A redis-py client of the same Redis whose connect and socket timeouts are
        :data:`BRIEF_WAIT` at most: for what its caller does not wait for longer (a connection
        pool of its own, created on first use).
        """
        return make_client(self.settings, timeout=BRIEF_WAIT)

    @functools.cached_property
    def waiting_client(self) -> redis.Redis:
        """A redis-py client of the same Redis for blocking waits shorter than the socket
        timeout: its connections connect and shake hands within :data:`ANSWER_MARGIN` (a
        connection pool of its own, created on first use, whose connections stay connected from
        one wait to the next).
        """
        return make_client(self.settings, timeout=ANSWER_MARGIN)

    def new_connection(self) -> redis.Connection:
        """A connection outside the pool, with the pool's options (the caller closes it)."""
        pool = self.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """Turn any redis-py error inside the block into ``ResultBackendUnavailable`` naming the URL."""
        try:
            yield
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc

    def unavailable(self, exc: BaseException) -> ResultBackendUnavailable:
        """The error a caller sees for redis-py's ``exc``: the masked URL and what Redis said."""
        return ResultBackendUnavailable(f"Redis at {mask_url(self.settings.redis_url)} failed: {exc}")


def get_redis(settings: Settings | None = None) -> RedisConnection:
    """The Redis of ``settings`` (the process's settings, read on first use, when omitted), one
    per settings object.
    """
    return _redis_of(settings or PROCESS_SETTINGS)


@functools.cache
def _redis_of(settings: Settings) -> RedisConnection:
    return RedisConnection(settings)

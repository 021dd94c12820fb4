"""Delayed messages, kept in Redis until they are due: no worker holds one unacknowledged.

Dramatiq holds a delayed message in the worker that received it from the queue's ``.DQ``,
unacknowledged until its time; past RabbitMQ's ``consumer_timeout`` (30 minutes by default)
the channel is closed and the message delivered again, over and over. Here a delayed message
is kept in a sorted set of its queue, scored by its due time, beside its encoded body; a
worker that consumes the queue takes what is due and publishes it (see
:mod:`pipeline.jobs.due`), then removes it.

Taking a message pushes its score a lease ahead rather than removing it: a worker that dies
between taking and publishing leaves it to be taken again once the lease is over.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import redis.commands.core

from pipeline.store.connection import RedisConnection

#: KEYS: the queue's sorted set, its bodies. ARGV: now (ms), most to take, lease end (ms).
#: Returns {ids and due times (flat), bodies, first due time or false}: the due messages with
#: their bodies (a body removed meanwhile, by a revocation, is ''), else the earliest due time.
TAKE_DUE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {{}, {}, first[2] or false}
end
local ids = {}
for i = 1, #due, 2 do
  ids[#ids + 1] = due[i]
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i])
end
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
for i = 1, #ids do if not bodies[i] then bodies[i] = '' end end
return {due, bodies, false}
"""

#: KEYS: the queue's sorted set, its bodies. ARGV: the lease's end (ms), then ids. Forgets each
#: id still leased by that take: one sent again meanwhile (a retry, a mail waiting for its
#: turn) has another due time and is kept. Returns how many were forgotten.
FORGET_SCRIPT = """
local forgotten = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    forgotten = forgotten + 1
  end
end
return forgotten
"""

#: KEYS: the queue's sorted set. ARGV: the lease's end (ms), then id and due time pairs. Gives
#: back each id still leased by that take, due at its time again: one whose lease ran out and
#: that another worker took since, or sent again meanwhile, is left as it is. Returns how many
#: were given back.
RELEASE_SCRIPT = """
local released = 0
for i = 2, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[i + 1], ARGV[i])
    released = released + 1
  end
end
return released
"""
#: Seconds a taken message is left to its taker before another worker may take it again.
LEASE = 30.0


@dataclasses.dataclass(frozen=True)
class Taken:
    """A message taken when due: its id, due time (Unix milliseconds) and encoded body (empty
    when it was cancelled meanwhile).
    """

    message_id: str
    due: int
    body: str


@dataclasses.dataclass(frozen=True)
class DueMessages:
    """What one take found: the due messages, and the earliest due time of the rest (Unix
    milliseconds) when none was due.
    """

    taken: list[Taken]
    next_due: int | None
    lease_end: int = 0


class Schedule:
    """The delayed messages of one deployment, per queue.

    Parameters:
      redis: The Redis of the records.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis

    def add(self, queue_name: str, message_id: str, due: int, body: str, *, brief: bool = False) -> None:
        """Keep ``body`` until ``due`` (Unix milliseconds), in one transaction.

        Parameters:
          brief: Wait :data:`~pipeline.store.connection.BRIEF_WAIT` seconds at most for Redis
            (a send, which has the queue's ``.DQ`` to go to instead), not the settings' timeouts.

        Raises:
          ResultBackendUnavailable: Redis did not take it, or not in time; it may still.
        """
        keys = self.redis.keys
        client = self.redis.brief_client if brief else self.redis.client
        with self.redis.translated():
            pipe = client.pipeline(transaction=True)
            pipe.hset(keys.scheduled_messages(queue_name), message_id, body)
            pipe.zadd(keys.scheduled(queue_name), {message_id: due})
            pipe.execute()

    @functools.cached_property
    def _take_due(self) -> redis.commands.core.Script:
        # Sent by its digest (EVALSHA), loaded again when Redis forgot it: not the whole script
        # with every poll of every worker.
        return self.redis.client.register_script(TAKE_DUE_SCRIPT)

    @functools.cached_property
    def _release(self) -> redis.commands.core.Script:
        return self.redis.client.register_script(RELEASE_SCRIPT)

    @functools.cached_property
    def _forget(self) -> redis.commands.core.Script:
        return self.redis.client.register_script(FORGET_SCRIPT)

    def take_due(self, queue_name: str, now: int, most: int) -> DueMessages:
        """Take up to ``most`` messages due by ``now`` (Unix milliseconds), leased for :data:`LEASE`.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        keys = self.redis.keys
        lease_end = now + int(LEASE * 1000)
        with self.redis.translated():
            found = keys.scheduled(queue_name), keys.scheduled_messages(queue_name)
            reply = self._take_due(keys=found, args=[now, most, lease_end])
        due, bodies, first = cast("tuple[list[str], list[str], str | None]", reply)
        taken = [
            Taken(_text(due[2 * i]), int(float(due[2 * i + 1])), _text(body or "")) for i, body in enumerate(bodies)
        ]
        return DueMessages(taken, int(float(first)) if first else None, lease_end)

    def release(self, queue_name: str, found: DueMessages, taken: list[Taken]) -> int:
        """Give messages of ``found`` back, due at their own times again (their publish failed),
        unless the lease ran out and another worker took one since, or it was sent again: that
        one is not this take's to give back. How many were given back.

        Raises:
          ResultBackendUnavailable: Redis failed (the lease gives them back later).
        """
        if not taken:
            return 0
        args: list[str | int] = [found.lease_end]
        for message in taken:
            args += [message.message_id, message.due]
        with self.redis.translated():
            released = self._release(keys=[self.redis.keys.scheduled(queue_name)], args=args)
        return cast("int", released)

    def forget_taken(self, queue_name: str, found: DueMessages, message_ids: list[str]) -> None:
        """Forget messages of ``found`` that were published, unless one was kept again since
        (its id sent with a delay anew, after its publish).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        if not message_ids:
            return
        keys = self.redis.keys
        with self.redis.translated():
            found_keys = keys.scheduled(queue_name), keys.scheduled_messages(queue_name)
            self._forget(keys=found_keys, args=[found.lease_end, *message_ids])

    def remove(self, queue_name: str, message_ids: list[str]) -> None:
        """Forget messages whatever their due time (cancelled: revoked before it).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        if not message_ids:
            return
        keys = self.redis.keys
        with self.redis.translated():
            pipe = self.redis.client.pipeline(transaction=True)
            pipe.zrem(keys.scheduled(queue_name), *message_ids)
            pipe.hdel(keys.scheduled_messages(queue_name), *message_ids)
            pipe.execute()

    def count(self, queue_name: str) -> int:
        """How many delayed messages of ``queue_name`` are kept."""
        with self.redis.translated():
            return cast("int", self.redis.client.zcard(self.redis.keys.scheduled(queue_name)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

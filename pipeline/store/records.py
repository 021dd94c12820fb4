"""Job records in Redis: the store that reads and writes them.

Each message has one record, a Redis hash (see :meth:`~pipeline.store.keys.Keys.record`) whose
fields hold JSON values: ``state``, ``actor``, ``queue``, ``priority``, ``attempt``, timestamps,
``result`` or ``error``, ``progress``. Every write goes through one Lua script that compares the
write's rank with the record's (see :mod:`pipeline.states`), so states only move forward, and
that pushes a snapshot of the record onto the job's done list when it reaches a finished state;
:meth:`RecordStore.wait` blocks on that list instead of polling. Readers use
:class:`pipeline.results.AsyncResult`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis

from pipeline.errors import JobTimeout, ResultBackendUnavailable
from pipeline.job_record import JobRecord
from pipeline.settings import Settings
from pipeline.states import FINAL_RANK, JobState, rank
from pipeline.store.connection import RedisConnection, get_redis

#: Record writes a thread may have sent without reading their answers yet.
MAX_UNREAD_WRITES = 2
#: Share of the socket timeout one blocking wait for a result may take, so Redis answers in time.
WAIT_SLICE_SHARE = 0.5

#: Writes fields unless the record is final or ranks above the write. KEYS: record, done list.
#: ARGV: rank ('' keeps the record's, and then needs a record), ttl seconds, field, value, ...
#: On reaching a final state it pushes a JSON snapshot of the record onto the done list, which
#: waiters read with BLMOVE from the list onto itself, so every waiter sees it and none takes it.
#: Returns {applied (0/1), state JSON or false}.
_WRITE_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'rank'))
local new = tonumber(ARGV[1])
if new == nil then
  if current == nil then return {0, false} end
  new = current
end
if current ~= nil and (current >= FINAL_RANK or new < current) then
  return {0, redis.call('HGET', KEYS[1], 'state')}
end
redis.call('HSET', KEYS[1], 'rank', new, unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if new >= FINAL_RANK and (current == nil or current < FINAL_RANK) then
  local flat = redis.call('HGETALL', KEYS[1])
  local snapshot = {}
  for i = 1, #flat, 2 do snapshot[flat[i]] = flat[i + 1] end
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], cjson.encode(snapshot))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {1, redis.call('HGET', KEYS[1], 'state')}
""".replace("FINAL_RANK", str(FINAL_RANK))


class RecordStore:
    """Reads and writes job records in one Redis database.

    Nothing connects until the first call. Redis errors surface as
    :class:`~pipeline.errors.ResultBackendUnavailable` naming the URL (password masked).

    Parameters:
      redis: The Redis of the records; gives the keys and ``result_ttl``.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        self.settings = redis.settings
        self.keys = redis.keys
        self._local = threading.local()

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (a connection pool)."""
        return self.redis.client

    @functools.cached_property
    def _script(self) -> Any:
        """The write script, registered with the client (loaded into Redis on first use)."""
        return self.client.register_script(_WRITE_SCRIPT)

    def translated(self) -> contextlib.AbstractContextManager[None]:
        """Turn redis-py's errors inside the block into ``ResultBackendUnavailable``."""
        return self.redis.translated()

    def _write_call(
        self, message_id: str, state: JobState | None, attempt: int, fields: Mapping[str, Any]
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the write script for one record (state None: keep it)."""
        if state is not None:
            fields = {"message_id": message_id, "state": state.value, **fields}
            if attempt:
                fields = {**fields, "attempt": attempt}
        args: list[Any] = ["" if state is None else rank(state, attempt), self.settings.result_ttl]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        return [self.keys.record(message_id), self.keys.done(message_id)], args

    def _send(self, keys: list[str], args: list[Any], pending: PendingWrite | None = None) -> PendingWrite:
        """Send one write on this thread's own connection; its answer is read later, in order."""
        line = getattr(self._local, "line", None)
        if line is None or line.pid != os.getpid():
            line = self._local.line = _WriteLine(self.redis.new_connection())
        with self.translated():
            try:
                line.connection.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
            except (redis.ConnectionError, redis.TimeoutError):
                line.drop_connection()
                line.connection.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        pending = pending or PendingWrite(self, line, keys, args)
        line.unread.append(pending)
        # Answers older than the last few have long arrived: reading them now costs no wait
        # and keeps unread answers from piling up in the socket.
        while len(line.unread) > MAX_UNREAD_WRITES:
            line.unread[0].settle()
        return pending

    def settle_thread(self) -> None:
        """Read every answer this thread's writes still wait for (before the thread ends)."""
        line = getattr(self._local, "line", None)
        while line is not None and line.unread:
            line.unread[-1].settle()

    def _run(self, keys: list[str], args: list[Any]) -> tuple[bool, JobState]:
        return self._send(keys, args).result()

    def write(self, message_id: str, state: JobState, /, *, attempt: int = 0, **fields: Any) -> tuple[bool, JobState]:
        """Move ``message_id``'s record to ``state`` with ``fields``, if that is forward.

        Parameters:
          message_id: The job's message id.
          state: The state to write.
          attempt: The attempt number, for ``STARTED`` and ``RETRY``.
          **fields: JSON-safe record fields to set alongside.

        Returns:
          Whether the write applied, and the record's state after it.

        Raises:
          ResultBackendUnavailable: Redis is unreachable.
          TypeError: A field is not JSON-safe.
        """
        return self._run(*self._write_call(message_id, state, attempt, fields))

    def begin_write(self, message_id: str, state: JobState, /, *, attempt: int = 0, **fields: Any) -> PendingWrite:
        """Send the same write as :meth:`write` without waiting for Redis's answer.

        The caller does other waiting meanwhile (a publisher confirm) and then calls
        :meth:`PendingWrite.result`, so the Redis round trip costs no time of its own.

        Raises:
          ResultBackendUnavailable: Redis is unreachable.
          TypeError: A field is not JSON-safe.
        """
        return self._send(*self._write_call(message_id, state, attempt, fields))

    def write_queued(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write ``QUEUED`` records for many messages in one round trip.

        Parameters:
          records: Record fields, each with its ``message_id``.

        Raises:
          ResultBackendUnavailable: Redis is unreachable.
        """
        with self.translated():
            pipe = self.client.pipeline(transaction=False)
            for fields in records:
                message_id = fields["message_id"]
                keys, args = self._write_call(message_id, JobState.QUEUED, 0, fields)
                self._script(keys=keys, args=args, client=pipe)
            pipe.execute()

    def update(self, message_id: str, /, **fields: Any) -> bool:
        """Set ``fields`` on an unfinished record without changing its state.

        Returns:
          False when there is no record or it is finished (the write is then dropped).
        """
        applied, _ = self._run(*self._write_call(message_id, None, 0, fields))
        return applied

    def read(self, message_id: str) -> JobRecord | None:
        """The record of ``message_id``, or None when there is none."""
        with self.translated():
            raw = cast("dict[str, str]", self.client.hgetall(self.keys.record(message_id)))
        return _decode(raw) if raw else None

    def state(self, message_id: str) -> JobState:
        """The state of ``message_id``'s record; ``PENDING`` when there is none."""
        with self.translated():
            stored = cast("str | None", self.client.hget(self.keys.record(message_id), "state"))
        return JobState(json.loads(stored)) if stored else JobState.PENDING

    def delete(self, message_id: str) -> bool:
        """Remove ``message_id``'s record; True if there was one."""
        with self.translated():
            return bool(self.client.delete(self.keys.record(message_id), self.keys.done(message_id)))

    def wait(self, message_id: str, timeout: float | None) -> JobRecord:
        """Block until ``message_id``'s record is finished and return it.

        A blocking Redis call on the record's done list answers at once when the job has
        already finished, or the moment it does. The wait is cut into calls shorter than the
        socket timeout, so a frozen Redis is noticed and a long wait never trips the timeout.

        Raises:
          JobTimeout: ``timeout`` seconds passed first.
          ResultBackendUnavailable: Redis is unreachable.
        """
        done = self.keys.done(message_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = self.settings.redis_socket_timeout * WAIT_SLICE_SHARE
        with self.translated():
            while True:
                left = longest if deadline is None else min(longest, deadline - time.monotonic())
                if left <= 0:
                    # BLMOVE reads a timeout of 0 as "forever"; no time left means look once.
                    snapshot = cast("str | None", self.client.lindex(done, 0))
                else:
                    # BLMOVE takes seconds with a millisecond resolution (redis-py types it as whole seconds).
                    seconds: Any = max(round(left, 3), 0.001)
                    snapshot = cast("str | None", self.client.blmove(done, done, seconds, src="RIGHT", dest="LEFT"))
                if snapshot is not None:
                    return _decode(json.loads(snapshot))
                if left <= 0:
                    state = self.state(message_id)
                    raise JobTimeout(f"job {message_id} did not finish within {timeout} s (state {state})")


class _WriteLine:
    """One thread's own Redis connection for record writes, outside the pool.

    Writes are the hot path of every job; a connection of its own spares them the pool's lock
    and lets writes be sent now and their answers read later, in order (Redis pipelining).
    """

    def __init__(self, connection: redis.Connection) -> None:
        self.connection = connection
        self.pid = os.getpid()
        self.unread: collections.deque[PendingWrite] = collections.deque()

    def drop_connection(self) -> list[PendingWrite]:
        """Close the connection (a new one opens on the next write).

        Returns:
          The writes whose answers were lost with it, oldest first.
        """
        lost = list(self.unread)
        self.unread.clear()
        self.connection.disconnect()
        return lost


class PendingWrite:
    """A record write sent to Redis whose answer has not been read yet; see :meth:`result`."""

    def __init__(self, store: RecordStore, line: _WriteLine, keys: list[str], args: list[Any]) -> None:
        self._store = store
        self._line = line
        self._call = (keys, args)
        self._outcome: tuple[bool, JobState] | None = None
        self._error: redis.RedisError | None = None
        self._resent = False

    def settle(self) -> None:
        """Read this write's answer, and those of the writes sent before it on the connection.

        A write whose connection broke is sent again once on a new one: the script's rank check
        makes a repeat harmless.

        Raises:
          ResultBackendUnavailable: Redis is unreachable.
        """
        line = self._line
        while self._outcome is None and self in line.unread:
            oldest = line.unread[0]
            with self._store.translated():
                try:
                    reply = line.connection.read_response()
                except redis.exceptions.NoScriptError:
                    # Redis lost its script cache (a restart): load it and send this write again.
                    line.unread.popleft()
                    self._store.client.script_load(_WRITE_SCRIPT)
                    self._store._send(*oldest._call, pending=oldest)
                    continue
                except (redis.ConnectionError, redis.TimeoutError):
                    if self._resent:
                        raise
                    self._resent = True
                    for lost in line.drop_connection():
                        self._store._send(*lost._call, pending=lost)
                    continue
                except redis.ResponseError as exc:
                    # An error reply (out of memory, read-only replica) is this write's answer:
                    # consumed, so the next answer is matched to the next write.
                    line.unread.popleft()
                    oldest._error = exc
                    continue
            line.unread.popleft()
            oldest._outcome = _outcome(*reply)

    def result(self) -> tuple[bool, JobState]:
        """Wait for Redis's answer: whether the write applied, and the record's state after it.

        Raises:
          ResultBackendUnavailable: Redis is unreachable.
        """
        self.settle()
        if self._error is not None:
            raise self._store.redis.unavailable(self._error)
        if self._outcome is None:
            raise ResultBackendUnavailable("the answer to a record write was lost")
        return self._outcome

    def cancel(self) -> None:
        """Stop waiting for the answer: read and drop it (the write stands either way)."""
        with contextlib.suppress(ResultBackendUnavailable):
            self.settle()


def _outcome(applied: int, stored: str | None) -> tuple[bool, JobState]:
    return bool(applied), JobState(json.loads(stored)) if stored else JobState.PENDING


def _decode(raw: Mapping[str, str]) -> JobRecord:
    """A record as stored (field to JSON text) as a dict of values, without internal fields."""
    return cast("JobRecord", {name: json.loads(value) for name, value in raw.items() if name != "rank"})


@functools.cache
def get_store(settings: Settings | None = None) -> RecordStore:
    """The record store for ``settings`` (the process's settings when omitted), one per settings."""
    return RecordStore(get_redis(settings))

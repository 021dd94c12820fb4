"""Job records in Redis: the key layout and the store that reads and writes them.

Each message has one record, a Redis hash at ``pipeline:job:<message_id>``, whose fields hold
JSON values: ``state``, ``actor``, ``queue``, ``priority``, ``attempt``, timestamps, ``result``
or ``error``, ``progress``. Every write goes through one Lua script that compares the write's
rank with the record's (see :mod:`pipeline.states`), so states only move forward, and that
pushes a snapshot of the record onto the list ``pipeline:job:<message_id>:done`` when it
reaches a finished state; :meth:`RecordStore.wait` blocks on that list instead of polling.
Readers use :class:`pipeline.results.AsyncResult`; this module owns the key layout of records.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis

from pipeline.errors import JobTimeout, ResultBackendUnavailable
from pipeline.settings import Settings, get_settings, mask_url
from pipeline.states import FINAL_RANK, JobState, rank

#: Prefix of every job record key; the full key is ``<prefix><message_id>``.
RECORD_PREFIX = "pipeline:job:"
#: Suffix of the list that receives a snapshot of the record when the job finishes.
DONE_SUFFIX = ":done"
#: Record writes a thread may have sent without reading their answers yet.
MAX_UNREAD_WRITES = 2

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


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds, the format of every record timestamp."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def iso_from_millis(millis: int) -> str:
    """A Unix time in milliseconds (Dramatiq's ``eta``) in the format of :func:`now_iso`."""
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def record_key(message_id: str) -> str:
    """The Redis key of ``message_id``'s record."""
    return RECORD_PREFIX + message_id


def _done_key(message_id: str) -> str:
    return RECORD_PREFIX + message_id + DONE_SUFFIX


class RecordStore:
    """Reads and writes job records in one Redis database.

    Nothing connects until the first call. Redis errors surface as
    :class:`~pipeline.errors.ResultBackendUnavailable` naming the URL (password masked).

    Parameters:
      settings: Gives ``redis_url`` and ``result_ttl``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: redis.Redis | None = None
        self._local = threading.local()

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (a connection pool), created on first use."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        return self._client

    @functools.cached_property
    def _script(self) -> Any:
        """The write script, registered with the client (loaded into Redis on first use)."""
        return self.client.register_script(_WRITE_SCRIPT)

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """Turn redis-py's connection errors inside the block into ``ResultBackendUnavailable``."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ResultBackendUnavailable(
                f"Redis at {mask_url(self.settings.redis_url)} is unreachable: {exc}"
            ) from exc

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
        return [record_key(message_id), _done_key(message_id)], args

    def _send(self, keys: list[str], args: list[Any], pending: PendingWrite | None = None) -> PendingWrite:
        """Send one write on this thread's own connection; its answer is read later, in order."""
        line = getattr(self._local, "line", None)
        if line is None or line.pid != os.getpid():
            line = self._local.line = _WriteLine(self.client)
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

    def read(self, message_id: str) -> dict[str, Any] | None:
        """The record of ``message_id`` as a dict, or None when there is none."""
        with self.translated():
            raw = self.client.hgetall(record_key(message_id))
        return _decode(raw) if raw else None

    def state(self, message_id: str) -> JobState:
        """The state of ``message_id``'s record; ``PENDING`` when there is none."""
        with self.translated():
            stored = self.client.hget(record_key(message_id), "state")
        return JobState(json.loads(stored)) if stored else JobState.PENDING

    def delete(self, message_id: str) -> bool:
        """Remove ``message_id``'s record; True if there was one."""
        with self.translated():
            return bool(self.client.delete(record_key(message_id), _done_key(message_id)))

    def wait(self, message_id: str, timeout: float | None) -> dict[str, Any]:
        """Block until ``message_id``'s record is finished and return it.

        One blocking Redis call on the record's done list: it answers at once when the job has
        already finished, or the moment it does.

        Raises:
          JobTimeout: ``timeout`` seconds passed first.
          ResultBackendUnavailable: Redis is unreachable.
        """
        done = _done_key(message_id)
        with self.translated():
            if timeout is not None and timeout <= 0:
                # BLMOVE reads a timeout of 0 as "forever"; no time to wait means look once.
                snapshot = self.client.lindex(done, 0)
            else:
                snapshot = self.client.blmove(done, done, timeout or 0, src="RIGHT", dest="LEFT")
            if snapshot is None:
                raise JobTimeout(f"job {message_id} did not finish within {timeout} s (state {self.state(message_id)})")
        return _decode(json.loads(snapshot))


class _WriteLine:
    """One thread's own Redis connection for record writes, outside the pool.

    Writes are the hot path of every job; a connection of its own spares them the pool's lock
    and lets writes be sent now and their answers read later, in order (Redis pipelining).
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self.connection = pool.connection_class(**pool.connection_kwargs)
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
            line.unread.popleft()
            oldest._outcome = _outcome(*reply)

    def result(self) -> tuple[bool, JobState]:
        """Wait for Redis's answer: whether the write applied, and the record's state after it.

        Raises:
          ResultBackendUnavailable: Redis is unreachable.
        """
        self.settle()
        if self._outcome is None:
            raise ResultBackendUnavailable("the answer to a record write was lost")
        return self._outcome

    def cancel(self) -> None:
        """Stop waiting for the answer: read and drop it (the write stands either way)."""
        with contextlib.suppress(ResultBackendUnavailable):
            self.settle()


def _outcome(applied: int, stored: str | None) -> tuple[bool, JobState]:
    return bool(applied), JobState(json.loads(stored)) if stored else JobState.PENDING


def _decode(raw: Mapping[str, str]) -> dict[str, Any]:
    """A record as stored (field to JSON text) as a dict of values, without internal fields."""
    return {name: json.loads(value) for name, value in raw.items() if name != "rank"}


@functools.cache
def get_store(settings: Settings | None = None) -> RecordStore:
    """The record store for ``settings`` (the process's settings when omitted), one per settings."""
    return RecordStore(settings or get_settings())

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

import atexit
import collections
import contextlib
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import redis

from pipeline.errors import JobTimeout, ResultBackendUnavailable
from pipeline.job_record import JobRecord
from pipeline.settings import Settings
from pipeline.states import JobState, rank
from pipeline.store.connection import RedisConnection, get_redis
from pipeline.store.held_writes import HOLD_AT_MOST, HeldWritesSender
from pipeline.store.keys import FAILURE_TTL
from pipeline.store.write_line import (
    MAX_HELD_WRITES,
    MAX_UNREAD_WRITES,
    WRITE_SCRIPT,
    PendingWrite,
    WriteCall,
    WriteLine,
    json_value,
    passes,
    state_reply,
)

logger = logging.getLogger(__name__)

#: Seconds a sender waits, after RabbitMQ's confirm, for the answer to its ``QUEUED`` write.
QUEUED_ANSWER_WAIT = 0.25
#: Seconds another thread (or the process at exit) waits for an idle line's unread answers.
IDLE_ANSWER_WAIT = 0.5
#: Seconds one blocking wait for a result lasts at most before it is renewed.
WAIT_SLICE = 30.0
#: Seconds past a blocking wait's own end that Redis may take to answer it.
WAIT_MARGIN = 1.0
#: Worker record writes kept while Redis is away, to be written when it is back; past this
#: many, the oldest are dropped (and the loss logged).
MAX_KEPT_WRITES = 50_000
#: Kept writes sent to Redis in one round trip when catching up.
CATCH_UP_BATCH = 500


#: Moves a FAILURE record (KEYS[1], its done list KEYS[2], the index prefix KEYS[3]) back to
#: QUEUED, in the index too; 1 when it did.
REQUEUE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'result', 'next_attempt_at', 'started_at')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'rank', ARGV[3], 'requeued_at', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
redis.call('DEL', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local id = string.match(KEYS[1], '([^:]+)$')
local now = redis.call('TIME')
local score = tonumber(now[1]) * 1000000 + tonumber(now[2])
redis.call('ZREM', KEYS[3] .. ':' .. cjson.decode(ARGV[1]), id)
redis.call('ZADD', KEYS[3] .. ':' .. cjson.decode(ARGV[2]), score, id)
return 1
"""
#: Deletes a record (KEYS[1]) and its done list (KEYS[2]), and its entries in the index (prefix
#: KEYS[3]); the number of keys deleted.
DELETE_SCRIPT = """
local id = string.match(KEYS[1], '([^:]+)$')
local state = redis.call('HGET', KEYS[1], 'state')
local actor = redis.call('HGET', KEYS[1], 'actor')
if state then redis.call('ZREM', KEYS[3] .. ':' .. cjson.decode(state), id) end
if actor then redis.call('ZREM', KEYS[3] .. ':actor:' .. cjson.decode(actor), id) end
return redis.call('DEL', KEYS[1], KEYS[2])
"""


#: Index members looked through at most to answer one listing (expired ones, or with an actor
#: and a state, those in other states, are skipped).
MAX_INDEX_WINDOW = 100_000


class RecordStore:
    """Reads and writes job records in one Redis database.

    Nothing connects until the first call. Redis errors surface as
    :class:`~pipeline.errors.ResultBackendUnavailable` naming the URL (password masked). A
    write sent with ``keep=True`` (a worker's) that Redis does not take is kept instead, and
    :meth:`catch_up` writes it once Redis is back: every write is idempotent (ranks), so a late
    one never turns a record back.

    Parameters:
      redis: The Redis of the records; gives the keys and ``result_ttl``.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        self.settings = redis.settings
        self.keys = redis.keys
        self._local = threading.local()
        # Every thread's write connection, for the answers still unread when the process ends.
        self._lines: weakref.WeakSet[WriteLine] = weakref.WeakSet()
        self._held_sender = HeldWritesSender(self.send_held, HOLD_AT_MOST)
        atexit.register(self._settle_lines)
        self._kept: collections.deque[WriteCall] = collections.deque()
        self._kept_lock = threading.Lock()
        self.dropped = 0

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (a connection pool)."""
        return self.redis.client

    @functools.cached_property
    def _script(self) -> Any:
        """The write script, registered with the client (loaded into Redis on first use)."""
        return self.client.register_script(WRITE_SCRIPT)

    def translated(self) -> contextlib.AbstractContextManager[None]:
        """Turn redis-py's errors inside the block into ``ResultBackendUnavailable``."""
        return self.redis.translated()

    def _write_call(
        self, message_id: str, state: JobState | None, attempt: int, fields: Mapping[str, Any]
    ) -> WriteCall:
        """The keys and arguments of the write script for one record (state None: keep it)."""
        if state is not None:
            fields = {"message_id": message_id, "state": state.value, **fields}
            if attempt:
                fields = {**fields, "attempt": attempt}
        # A failure lives as long as its message may wait in the dead-letter queue.
        ttl = max(self.settings.result_ttl, FAILURE_TTL) if state is JobState.FAILURE else self.settings.result_ttl
        args: list[Any] = ["" if state is None else rank(state, attempt), ttl, time.time_ns() // 1000]
        for name, value in fields.items():
            args += [name, json_value(value)]
        return [self.keys.record(message_id), self.keys.done(message_id), self.keys.index], args

    def _line(self) -> WriteLine:
        """This thread's write line (a new one in a forked child)."""
        line = getattr(self._local, "line", None)
        if line is None or line.pid != os.getpid():
            line = self._local.line = WriteLine(self.redis.new_connection())
            self._lines.add(line)
        return line

    def send_call(
        self,
        call: WriteCall,
        keep: bool,
        pending: PendingWrite | None = None,
        command: str = "EVALSHA",
        on_lost: Callable[[ResultBackendUnavailable], object] | None = None,
    ) -> PendingWrite:
        """Send one write on this thread's own connection; its answer is read later, in order.

        ``command`` HGET reads the record's state instead (``call`` holds just the record's key).
        """
        line = self._line()
        pending = pending or self._pending(line, call, keep, on_lost, command)
        with line.lock:
            # Sent after the writes this thread held back: its writes reach Redis in order.
            line.held.append(pending)
            self._send_held(line)
        return pending

    def _pending(
        self,
        line: WriteLine,
        call: WriteCall,
        keep: bool,
        on_lost: Callable[[ResultBackendUnavailable], object] | None,
        command: str = "EVALSHA",
    ) -> PendingWrite:
        """A write not sent yet: of the write script, or (``command`` HGET) a read of the state."""
        pending = PendingWrite(self, line, call, keep, on_lost)
        keys, args = call
        if command == "HGET":
            pending.command = ("HGET", keys[0], "state")
            pending.parse = state_reply
        else:
            pending.command = ("EVALSHA", self._script.sha, len(keys), *keys, *args)
        return pending

    def _send_on(self, line: WriteLine, batch: list[PendingWrite]) -> None:
        """Send ``batch`` on ``line`` in one write; a write that cannot be sent is lost (kept, or
        its loss told).
        """
        commands = [pending.command for pending in batch]
        try:
            if line.fresh:
                # A new connection may reach a Redis that just started, without the script: a
                # write's NOSCRIPT answer would only be read, and the write made, much later.
                self.client.script_load(WRITE_SCRIPT)
            try:
                line.send(commands)
            except (redis.ConnectionError, redis.TimeoutError):
                if line.fresh:
                    raise
                # A connection Redis closed while idle: one new connection, one more try.
                for lost in line.drop_connection():
                    lost.lost(redis.ConnectionError("connection lost"))
                line.send(commands)
            line.fresh = False
        except redis.RedisError as exc:
            for lost in line.drop_connection():
                lost.lost(exc)
            for pending in batch:
                pending.lost(exc)
            return
        line.last_sent = time.monotonic()
        line.unread.extend(batch)
        # Answers older than the last few have long arrived: reading them now costs no wait
        # and keeps unread answers from piling up in the socket.
        while len(line.unread) > MAX_UNREAD_WRITES:
            line.unread[0].settle()

    def write_soon(
        self,
        message_id: str,
        state: JobState,
        /,
        *,
        on_lost: Callable[[ResultBackendUnavailable], object] | None = None,
        **fields: Any,
    ) -> None:
        """Make the same write as :meth:`write` soon, sent together with this thread's others.

        The write is held back, and goes out with the thread's next write that is not held, or
        once :data:`MAX_HELD_WRITES` are held, or :data:`HOLD_AT_MOST` seconds after the oldest
        was made (by this thread's next write, or another that watches), or before this thread's
        next read, or at exit: one send to Redis for many writes, for writes nobody waits for
        (an unconfirmed send's ``QUEUED``).

        Parameters:
          on_lost: Told why, when Redis did not take the write.

        Raises:
          TypeError: A field is not JSON-safe.
        """
        call = self._write_call(message_id, state, 0, fields)
        line = self._line()
        pending = self._pending(line, call, False, on_lost)
        with line.lock:
            line.held.append(pending)
            if len(line.held) == 1:
                line.held_since = time.monotonic()
                self._held_sender.wake()
            elif len(line.held) >= MAX_HELD_WRITES or time.monotonic() - line.held_since >= HOLD_AT_MOST:
                self._send_held(line)

    def _send_held(self, line: WriteLine) -> None:
        """Send the writes ``line`` holds (its lock held)."""
        if line.held:
            batch, line.held = line.held, []
            self._send_on(line, batch)

    def send_held(self, older_than: float = 0.0) -> bool:
        """Send the writes every thread of this process holds since ``older_than`` seconds or more.

        Returns:
          Whether a thread still holds writes.
        """
        now, holding = time.monotonic(), False
        for line in list(self._lines):
            if line.pid != os.getpid() or not line.held:
                continue
            with line.lock:
                if line.held and now - line.held_since >= older_than:
                    self._send_held(line)
                holding = holding or bool(line.held)
        return holding

    def _make_own_held(self) -> None:
        """Send the writes this thread holds and read their answers, so that its reads see them."""
        line = getattr(self._local, "line", None)
        if line is not None and line.held:
            self.settle_thread()

    def settle_thread(self) -> None:
        """Send the writes this thread holds, and read every answer its writes still wait for
        (before the thread ends).
        """
        line = getattr(self._local, "line", None)
        if line is not None:
            with line.lock:
                self._send_held(line)
            line.read_all()

    def settle_idle_lines(self, idle: float) -> None:
        """Read the answers of every thread's writes sent ``idle`` seconds ago or more, on lines
        no thread is using: a thread whose writes wait for no answer of their own (a worker's)
        does not wait for them either, and a write Redis refused is still found (and kept)
        while its thread has no more work.
        """
        now = time.monotonic()
        for line in list(self._lines):
            if line.pid != os.getpid() or not line.unread or now - line.last_sent < idle:
                continue
            if line.lock.acquire(blocking=False):
                try:
                    line.read_all(IDLE_ANSWER_WAIT)
                finally:
                    line.lock.release()

    def _settle_lines(self) -> None:
        """At exit, read the answers every thread's writes still wait for (a moment at most each):
        a write Redis did not take is then reported rather than never known.
        """
        self.send_held()
        for line in list(self._lines):
            if line.pid == os.getpid():
                line.read_all(IDLE_ANSWER_WAIT)

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
          ResultBackendUnavailable: Redis failed; the write may not have been made.
          TypeError: A field is not JSON-safe.
        """
        return self.send_call(self._write_call(message_id, state, attempt, fields), keep=False).result()

    def begin_write(
        self,
        message_id: str,
        state: JobState,
        /,
        *,
        attempt: int = 0,
        keep: bool = False,
        on_lost: Callable[[ResultBackendUnavailable], object] | None = None,
        **fields: Any,
    ) -> PendingWrite:
        """Send the same write as :meth:`write` without waiting for Redis's answer.

        The caller does other waiting meanwhile (a publisher confirm) and then calls
        :meth:`PendingWrite.result`, or never asks: a worker's writes are read with the thread's
        next write.

        Parameters:
          keep: Keep the write, to be made by :meth:`catch_up`, when Redis does not take it.
          on_lost: Told why, when Redis did not take the write (and ``keep`` is false): for a
            write whose answer nobody waits for.

        Raises:
          TypeError: A field is not JSON-safe.
        """
        return self.send_call(self._write_call(message_id, state, attempt, fields), keep, on_lost=on_lost)

    def keep(self, call: WriteCall) -> None:
        """Keep a write Redis did not take, for :meth:`catch_up` (dropping the oldest past the bound)."""
        with self._kept_lock:
            if len(self._kept) >= MAX_KEPT_WRITES:
                self._kept.popleft()
                self.dropped += 1
            self._kept.append(call)

    @property
    def kept(self) -> int:
        """How many writes wait for Redis to come back."""
        return len(self._kept)

    def catch_up(self) -> int:
        """Make the kept writes, in order, a batch per round trip, while Redis takes them.

        Returns:
          How many were written.

        Raises:
          ResultBackendUnavailable: Redis is still away (what was not written stays kept).
        """
        written = 0
        while True:
            with self._kept_lock:
                batch = [self._kept.popleft() for _ in range(min(CATCH_UP_BATCH, len(self._kept)))]
            if not batch:
                return written
            try:
                with self.translated():
                    self.client.script_load(WRITE_SCRIPT)
                    pipe = self.client.pipeline(transaction=False)
                    for keys, args in batch:
                        self._script(keys=keys, args=args, client=pipe)
                    replies = pipe.execute(raise_on_error=False)
            except ResultBackendUnavailable:
                with self._kept_lock:
                    self._kept.extendleft(reversed(batch))
                raise
            refused: redis.ResponseError | None = None
            for call, reply in zip(batch, replies, strict=True):
                if isinstance(reply, redis.ResponseError):
                    if passes(reply):
                        refused = reply
                        self.keep(call)
                        continue
                    logger.warning("A kept record write to %s was refused for good: %s", call[0][0], reply)
                    continue
                written += 1
            if refused is not None:
                # Redis answers but does not take writes yet (memory, a replica): try later.
                if written == 0:
                    raise self.redis.unavailable(refused)
                return written

    def write_queued(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write ``QUEUED`` records for many messages in one round trip.

        Parameters:
          records: Record fields, each with its ``message_id``.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        with self.translated():
            pipe = self.client.pipeline(transaction=False)
            for fields in records:
                keys, args = self._write_call(fields["message_id"], JobState.QUEUED, 0, fields)
                self._script(keys=keys, args=args, client=pipe)
            pipe.execute()

    def update(self, message_id: str, /, **fields: Any) -> bool:
        """Set ``fields`` on an unfinished record without changing its state.

        Returns:
          False when there is no record or it is finished (the write is then dropped).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        applied, _ = self.send_call(self._write_call(message_id, None, 0, fields), keep=False).result()
        return applied

    def state_in_line(self, message_id: str) -> JobState:
        """The state of ``message_id``'s record, read on this thread's write connection.

        One round trip that also brings the answers to the thread's earlier writes, without the
        connection pool: the hot path of a worker asking whether a job already finished.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        _, state = self.send_call(([self.keys.record(message_id)], []), keep=False, command="HGET").result()
        return state

    def read(self, message_id: str) -> JobRecord | None:
        """The record of ``message_id``, or None when there is none (this thread's own writes seen)."""
        self._make_own_held()
        with self.translated():
            raw = cast("dict[str, str]", self.client.hgetall(self.keys.record(message_id)))
        return _decode(raw) if raw else None

    def state(self, message_id: str) -> JobState:
        """The state of ``message_id``'s record; ``PENDING`` when there is none (this thread's own
        writes seen).
        """
        self._make_own_held()
        with self.translated():
            stored = cast("str | None", self.client.hget(self.keys.record(message_id), "state"))
        return JobState(json.loads(stored)) if stored else JobState.PENDING

    def count_duplicate(self) -> int:
        """Count one more message that was not run because its job had finished; the count so far.

        Returns 0 when Redis failed (the count is a statistic, never a reason to fail).
        """
        try:
            with self.translated():
                return int(cast("int", self.client.incr(self.keys.duplicates)))
        except ResultBackendUnavailable:
            return 0

    def requeue(self, message_id: str, requeued_at: str) -> bool:
        """Move a ``FAILURE`` record back to ``QUEUED``, for a dead-lettered message put back in its
        queue: its error, end and result are cleared, ``requeues`` counts one more and
        ``requeued_at`` says when.

        Returns:
          False when the record is not a failure (none, or in another state): nothing changed.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        with self.translated():
            moved = self.client.eval(
                REQUEUE_SCRIPT,
                3,
                self.keys.record(message_id),
                self.keys.done(message_id),
                self.keys.index,
                json.dumps(JobState.FAILURE.value),
                json.dumps(JobState.QUEUED.value),
                rank(JobState.QUEUED),
                json.dumps(requeued_at),
                self.settings.result_ttl,
            )
        return bool(moved)

    def delete(self, message_id: str) -> bool:
        """Remove ``message_id``'s record; True if there was one."""
        keys = (self.keys.record(message_id), self.keys.done(message_id), self.keys.index)
        with self.translated():
            return bool(self.client.eval(DELETE_SCRIPT, 3, *keys))

    def recent(
        self, *, state: JobState | None = None, actor: str | None = None, since: float = 0.0, limit: int = 50
    ) -> list[JobRecord]:
        """The records of the latest jobs, newest first, from the index (never a SCAN).

        Parameters:
          state: Only jobs in this state.
          actor: Only jobs of this actor.
          since: Only jobs whose last change is at or after this Unix time (seconds).
          limit: At most this many records.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        floor = int(since * 1_000_000)
        if actor is not None:
            sets = [self.keys.actor_index(actor)]
        else:
            chosen = [state] if state is not None else [s for s in JobState if s is not JobState.PENDING]
            sets = [self.keys.state_index(each.value) for each in chosen]
        found: list[JobRecord] = []
        window = limit
        with self.translated():
            # Members whose record expired (or, with an actor, in another state) are skipped: look
            # at a wider window of the newest members until enough records are found.
            while True:
                pipe = self.client.pipeline(transaction=False)
                for key in sets:
                    pipe.zrevrangebyscore(key, "+inf", floor, 0, window, withscores=True)
                answers = pipe.execute()
                newest = sorted((pair for pairs in answers for pair in pairs), key=lambda pair: -pair[1])[:window]
                records = self._records([member for member, _ in newest])
                found = [r for r in records if state is None or r.get("state") == state.value]
                exhausted = all(len(pairs) < window for pairs in answers)
                if len(found) >= limit or exhausted or window >= MAX_INDEX_WINDOW:
                    return found[:limit]
                window *= 4

    def _records(self, message_ids: list[str]) -> list[JobRecord]:
        """The records of ``message_ids`` that still exist, in order, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hgetall(self.keys.record(message_id))
        return [_decode(raw) for raw in pipe.execute() if raw]

    def wait(self, message_id: str, timeout: float | None) -> JobRecord:
        """Block until ``message_id``'s record is finished and return it.

        A blocking Redis call on the record's done list answers at once when the job has
        already finished, or the moment it does. Each call's answer is awaited only a moment
        past its own end, so a frozen Redis costs about ``timeout``, never forever.

        Raises:
          JobTimeout: ``timeout`` seconds passed first.
          ResultBackendUnavailable: Redis failed or did not answer in time.
        """
        done = self.keys.done(message_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.translated():
            while True:
                left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
                if left <= 0:
                    # BLMOVE reads a timeout of 0 as "forever"; no time left means look once.
                    snapshot = cast("str | None", self.client.lindex(done, 0))
                else:
                    snapshot = self._blocking_move(done, left)
                if snapshot is not None:
                    return _decode(json.loads(snapshot))
                if left <= 0:
                    state = self.state(message_id)
                    raise JobTimeout(f"job {message_id} did not finish within {timeout} s (state {state})")

    def _blocking_move(self, key: str, seconds: float) -> str | None:
        """``BLMOVE key key RIGHT LEFT seconds``, its answer awaited at most a moment past ``seconds``."""
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            # BLMOVE takes seconds with a millisecond resolution.
            connection.send_command("BLMOVE", key, key, "RIGHT", "LEFT", max(round(seconds, 3), 0.001))
            if not connection.can_read(timeout=seconds + min(WAIT_MARGIN, self.settings.redis_socket_timeout)):
                raise redis.TimeoutError(f"no answer within {seconds:.1f} s")
            return cast("str | None", connection.read_response())
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)


def _decode(raw: Mapping[str, str]) -> JobRecord:
    """A record as stored (field to JSON text) as a dict of values, without internal or cleared fields."""
    return cast(
        "JobRecord", {name: json.loads(value) for name, value in raw.items() if name != "rank" and value != "null"}
    )


@functools.cache
def get_store(settings: Settings | None = None) -> RecordStore:
    """The record store for ``settings`` (the process's settings when omitted), one per settings."""
    return RecordStore(get_redis(settings))

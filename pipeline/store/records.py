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
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import redis

from pipeline.errors import InvalidTimeout, JobTimeout, ResultBackendUnavailable, shown
from pipeline.job_record import JobRecord
from pipeline.settings import PROCESS_SETTINGS, Settings
from pipeline.states import JobState, rank
from pipeline.store.connection import ANSWER_MARGIN, RedisConnection, get_redis
from pipeline.store.keys import FAILURE_TTL, Keys
from pipeline.store.write_script import WRITE_SCRIPT, WriteCall, json_value, passes, script_reply, stored_state
from pipeline.store.writer import Answer, RedisWriter, When
from pipeline.timestamps import seconds_until

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds one blocking wait for a result lasts at most before it is renewed.
WAIT_SLICE = 30.0
#: Seconds of a wait that count as waiting as long as it takes: a thread waits no longer (some
#: 292 years), and a longer wait raised OverflowError.
FOREVER = threading.TIMEOUT_MAX
#: Seconds past a blocking wait's own end that Redis may take to answer it (a waiting
#: connection's handshake takes as long at most).
WAIT_MARGIN = ANSWER_MARGIN
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

    Nothing connects until the first call. Every write and state read goes through the
    process's :class:`~pipeline.store.writer.RedisWriter`, in the order they were made, so a
    thread's reads see its own writes. Redis errors surface as
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
        self.writer = RedisWriter(redis, scripts=(WRITE_SCRIPT,))
        self._sha = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()
        self._kept: collections.deque[WriteCall] = collections.deque()
        self._kept_lock = threading.Lock()
        self.dropped = 0

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (a connection pool)."""
        return self.redis.client

    @property
    def keys(self) -> Keys:
        """The key layout of the records' namespace."""
        return self.redis.keys

    @functools.cached_property
    def _answer_wait(self) -> float:
        return self.redis.answer_wait

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
        actor = fields.get("actor")
        if type(actor) is str and not actor.isascii():
            # The script keys the index by actor with the decoded name, and Redis's JSON decoder
            # refuses a lone surrogate (a raw message's actor name may hold one): it is kept as
            # its escape, as text.
            fields = {**fields, "actor": actor.encode("utf-8", "backslashreplace").decode("utf-8")}
        # A failure lives as long as its message may wait in the dead-letter queue.
        ttl = max(self.settings.result_ttl, FAILURE_TTL) if state is JobState.FAILURE else self.settings.result_ttl
        if state in _WAITING:
            # A job due later (a delay, a retry's backoff) keeps its record until then, and
            # PIPELINE_RESULT_TTL after: it must not read PENDING while it waits.
            ttl += seconds_until(fields.get(_WAITING[state]))
        args: list[Any] = ["" if state is None else rank(state, attempt), ttl, time.time_ns() // 1000]
        for name, value in fields.items():
            args += [name, json_value(value)]
        keys = [self.keys.record(message_id), self.keys.done(message_id), self.keys.index]
        if state is JobState.RETRY:
            # The job's claim (a mail sent once) must outlive the wait for the next attempt,
            # however long the message's own backoff: it lives as long as the record then.
            keys.append(self.keys.claim(message_id))
        return keys, args

    def _send(
        self,
        call: WriteCall,
        keep: bool = False,
        on_lost: Callable[[ResultBackendUnavailable], object] | None = None,
        when: When = When.NOW,
    ) -> Answer[tuple[bool, JobState]]:
        """Hand one write to the writer; keep it, or tell ``on_lost``, when Redis does not take it."""
        keys, args = call
        future = self.writer.submit("EVALSHA", self._sha, len(keys), *keys, *args, parse=script_reply, when=when)
        if keep or on_lost is not None:
            future.add_done_callback(functools.partial(self._after_write, call, keep, on_lost))
        return future

    def _after_write(
        self,
        call: WriteCall,
        keep: bool,
        on_lost: Callable[[ResultBackendUnavailable], object] | None,
        future: Answer[tuple[bool, JobState]],
    ) -> None:
        error = future.exception()
        if error is None:
            return
        if keep:
            self.keep(call)
        elif on_lost is not None and isinstance(error, ResultBackendUnavailable):
            on_lost(error)

    def _answer(self, future: Answer[T], what: str, timeout: float | None = None) -> T:
        """The answer to a command handed to the writer, awaited a bounded time: ``timeout``
        seconds (the caller's, for a command sent by the writer's thread), else as long as
        Redis may take.
        """
        try:
            if timeout is None:
                return self.writer.answer(future, self._answer_wait)
            return self.writer.answer(future, timeout, send=False)
        except ResultBackendUnavailable as exc:
            raise ResultBackendUnavailable(f"{what}: {exc}") from exc.__cause__

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
        future = self._send(self._write_call(message_id, state, attempt, fields))
        return self._answer(future, f"the write of job {message_id}")

    def begin_write(
        self,
        message_id: str,
        state: JobState,
        /,
        *,
        attempt: int = 0,
        keep: bool = False,
        on_lost: Callable[[ResultBackendUnavailable], object] | None = None,
        when: When = When.NOW,
        **fields: Any,
    ) -> Answer[tuple[bool, JobState]]:
        """Hand the same write as :meth:`write` to the writer without waiting for Redis's answer.

        The caller does other waiting meanwhile (a publisher confirm) and then asks the future
        (see :meth:`answer`), or never asks: a worker's writes are made as soon as the writer
        sends them, together with the process's other waiting writes.

        Parameters:
          keep: Keep the write, to be made by :meth:`catch_up`, when Redis does not take it.
          on_lost: Told why, when Redis did not take the write (and ``keep`` is false): for a
            write whose answer nobody waits for.
          when: Who sends it: this thread (``NOW``, unless another is sending; ``AHEAD``, at
            once, its answer read when asked for), the writer's thread at once (``SOON``) or
            within a few milliseconds (``LATER``); see
            :class:`~pipeline.store.writer.When`.

        Raises:
          TypeError: A field is not JSON-safe.
        """
        return self._send(self._write_call(message_id, state, attempt, fields), keep, on_lost, when)

    def answer(self, future: Answer[T], wait: float | None = None) -> T:
        """The answer to a write or read handed to the writer, waiting ``wait`` seconds at most
        (None: sent by this thread if it still waits, and as long as Redis may take).

        Raises:
          ResultBackendUnavailable: Redis failed, refused the write, or did not answer in time.
        """
        return self._answer(future, "a record command", wait)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write handed to the writer so far is answered; whether in time."""
        return self.writer.flush(self._answer_wait if timeout is None else timeout)

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

    def catch_up(self, brief: bool = False) -> int:
        """Make the kept writes, in order, a batch per round trip, while Redis takes them.

        Parameters:
          brief: Give Redis :data:`~pipeline.store.connection.BRIEF_WAIT` seconds at most for
            each round trip (a stopping worker's last try), not the settings' timeouts.

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
            client = self.redis.brief_client if brief else self.client
            try:
                with self.translated():
                    client.script_load(WRITE_SCRIPT)
                    pipe = client.pipeline(transaction=False)
                    for keys, args in batch:
                        pipe.evalsha(self._sha, len(keys), *keys, *args)
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

    def begin_queued(self, records: Iterable[Mapping[str, Any]]) -> list[Answer[tuple[bool, JobState]]]:
        """Hand ``QUEUED`` records for many messages to the writer, whose thread sends them
        together without the caller waiting (see :meth:`answer_all`).

        Parameters:
          records: Record fields, each with its ``message_id``.

        Returns:
          Each write's future, in the order of ``records``.
        """
        calls = [self._write_call(fields["message_id"], JobState.QUEUED, 0, fields) for fields in records]
        if not calls:
            return []
        # Held, but for the last, which has the writer's thread send them all at once.
        futures = [self._send(call, when=When.LATER) for call in calls[:-1]]
        futures.append(self._send(calls[-1], when=When.SOON))
        return futures

    def answer_all(self, futures: Iterable[Answer[T]], wait: float) -> None:
        """Wait for the answers of writes handed to the writer, ``wait`` seconds at most in all.

        Raises:
          ResultBackendUnavailable: Redis failed, refused a write, or did not answer in time.
        """
        deadline = time.monotonic() + wait
        for future in futures:
            self._answer(future, "a QUEUED write", max(0.0, deadline - time.monotonic()))

    def update(self, message_id: str, /, **fields: Any) -> bool:
        """Set ``fields`` on an unfinished record without changing its state.

        Returns:
          False when there is no record or it is finished (the write is then dropped).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        future = self._send(self._write_call(message_id, None, 0, fields))
        applied, _ = self._answer(future, f"the update of job {message_id}")
        return applied

    def state_soon(self, message_id: str, when: When = When.SOON) -> Answer[JobState]:
        """Ask the state of ``message_id``'s record; the future holds it (``PENDING`` when there
        is none). ``when`` says who sends the read (see :class:`~pipeline.store.writer.When`).
        """
        return self.writer.submit("HGET", self.keys.record(message_id), "state", parse=stored_state, when=when)

    def read(self, message_id: str, timeout: float | None = None) -> JobRecord | None:
        """The record of ``message_id``, or None when there is none (this process's writes
        handed in before seen).

        Raises:
          ResultBackendUnavailable: Redis failed, or did not answer within ``timeout`` seconds.
          InvalidTimeout: ``timeout`` is not a number of seconds (see :func:`checked_timeout`).
        """
        seconds = checked_timeout(timeout)
        future = self.writer.submit("HGETALL", self.keys.record(message_id), when=_sent_by(seconds))
        raw = cast("dict[str, str]", self._answer(future, f"the read of job {message_id}", seconds))
        return _decode(raw) if raw else None

    def state(self, message_id: str, timeout: float | None = None) -> JobState:
        """The state of ``message_id``'s record; ``PENDING`` when there is none (this process's
        writes handed in before seen).

        Raises:
          ResultBackendUnavailable: Redis failed, or did not answer within ``timeout`` seconds.
          InvalidTimeout: ``timeout`` is not a number of seconds (see :func:`checked_timeout`).
        """
        seconds = checked_timeout(timeout)
        future = self.state_soon(message_id, _sent_by(seconds))
        return self._answer(future, f"the state of job {message_id}", seconds)

    def count_duplicate(self) -> int:
        """Count one more message that was not run because its job had finished; the count so far.

        Returns 0 when Redis failed (the count is a statistic, never a reason to fail).
        """
        try:
            return int(self._answer(self.writer.submit("INCR", self.keys.duplicates), "a count"))
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
        future = self.writer.submit(
            "EVAL",
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
        return bool(self._answer(future, f"the requeue of job {message_id}"))

    def note_attempt(self, message_id: str, entry: Mapping[str, Any]) -> None:
        """Add an ended attempt (its number, start, end, state and error) to the job's history,
        sent now (with the writes waiting), its answer not awaited.
        """
        key = self.keys.attempts(message_id)
        self.writer.submit("RPUSH", key, json.dumps(entry, default=str), when=When.LATER)
        self.writer.submit("EXPIRE", key, max(self.settings.result_ttl, FAILURE_TTL))

    def attempts(self, message_id: str) -> list[dict[str, Any]]:
        """The job's ended attempts, oldest first (an entry pipeline did not write, which is not
        a JSON object, left out).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        with self.translated():
            raw = cast("list[str]", self.client.lrange(self.keys.attempts(message_id), 0, -1))
        return [entry for entry in map(_value, raw) if isinstance(entry, dict)]

    def delete(self, message_id: str, timeout: float | None = None) -> bool:
        """Remove ``message_id``'s record (and its attempts); True if there was one.

        Raises:
          ResultBackendUnavailable: Redis failed, or did not answer within ``timeout`` seconds.
          InvalidTimeout: ``timeout`` is not a number of seconds (see :func:`checked_timeout`).
        """
        seconds = checked_timeout(timeout)
        self.writer.submit("DEL", self.keys.attempts(message_id), when=When.LATER)
        # Answered with the removal below: the attempts are gone when it returns.
        keys = (self.keys.record(message_id), self.keys.done(message_id), self.keys.index)
        future = self.writer.submit("EVAL", DELETE_SCRIPT, 3, *keys, when=_sent_by(seconds))
        return bool(self._answer(future, f"the removal of job {message_id}", seconds))

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
        return self.page(state=state, actor=actor, since=since, limit=limit)[0]

    def page(
        self,
        *,
        state: JobState | None = None,
        actor: str | None = None,
        since: float = 0.0,
        before: int | None = None,
        id_prefix: str = "",
        limit: int = 50,
    ) -> tuple[list[JobRecord], int | None]:
        """A page of the latest jobs, newest first, from the index, and the cursor of the next.

        Parameters:
          state, actor, since: As :meth:`recent`.
          before: The cursor a previous page returned: only jobs older than it.
          id_prefix: Only jobs whose id starts with it.
          limit: At most this many records.

        Returns:
          The records, and the cursor of the next page (None when this is the last).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        if len(id_prefix) == 36 and before is None:
            # A whole id: its record, whatever the other filters.
            record = self.read(id_prefix)
            return ([{**record, "message_id": id_prefix}] if record is not None else []), None
        floor = int(since * 1_000_000)
        if actor is not None:
            sets = [self.keys.actor_index(actor)]
        else:
            chosen = [state] if state is not None else [s for s in JobState if s is not JobState.PENDING]
            sets = [self.keys.state_index(each.value) for each in chosen]
        found: list[JobRecord] = []
        ceiling = "+inf" if before is None else f"({before}"
        window = max(limit, 64)
        scanned = 0
        with self.translated():
            while scanned < MAX_INDEX_WINDOW:
                pipe = self.client.pipeline(transaction=False)
                for key in sets:
                    pipe.zrevrangebyscore(key, ceiling, floor, 0, window, withscores=True)
                answers = pipe.execute()
                newest = sorted((pair for pairs in answers for pair in pairs), key=lambda pair: -pair[1])[:window]
                if not newest:
                    return found, None
                scanned += len(newest)
                wanted = [(member, score) for member, score in newest if member.startswith(id_prefix)]
                pipe = self.client.pipeline(transaction=False)
                for member, _ in wanted:
                    pipe.hgetall(self.keys.record(member))
                for (member, score), raw in zip(wanted, pipe.execute(), strict=True):
                    if not raw:
                        continue  # expired
                    record = _decode(raw)
                    record.setdefault("message_id", member)
                    if state is not None and record.get("state") != state.value:
                        continue
                    found.append(record)
                    if len(found) == limit:
                        return found, int(score)
                if all(len(pairs) < window for pairs in answers):
                    return found, None
                ceiling = f"({int(newest[-1][1])}"
                # Few matches (a rare id prefix, a rare state): look further at each step.
                window = min(window * 4, 8192)
            return found, int(newest[-1][1])

    def sample(self, since: float, per_state: int, names: list[str]) -> dict[JobState, list[list[Any]]]:
        """For each state, the values of the fields ``names`` (None where missing) of the newest
        ``per_state`` jobs that entered it at or after ``since`` (Unix seconds), in two round trips.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        floor = int(since * 1_000_000)
        states = [s for s in JobState if s is not JobState.PENDING]
        with self.translated():
            pipe = self.client.pipeline(transaction=False)
            for state in states:
                pipe.zrevrangebyscore(self.keys.state_index(state.value), "+inf", floor, 0, per_state)
            members: list[list[str]] = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for found in members:
                for member in found:
                    pipe.hmget(self.keys.record(member), names)
            fields = iter(pipe.execute())
        return {
            state: [[None if text is None else _value(text) for text in next(fields)] for _ in found]
            for state, found in zip(states, members, strict=True)
        }

    def _records(self, message_ids: list[str]) -> list[JobRecord]:
        """The records of ``message_ids`` that still exist, in order, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hgetall(self.keys.record(message_id))
        return [_decode(raw) for raw in pipe.execute() if raw]

    def wait(self, message_id: str, timeout: float | None) -> JobRecord:
        """Block until ``message_id``'s record is finished and return it.

        A blocking Redis call on the record's done list answers at once when the job has
        already finished, or the moment it does. Each call's answer, and a new connection's
        handshake, are awaited only a moment past ``timeout``, so a frozen Redis costs about
        ``timeout``, never forever.

        Raises:
          JobTimeout: ``timeout`` seconds passed first.
          InvalidTimeout: ``timeout`` is not a number of seconds (see :func:`checked_timeout`).
          ResultBackendUnavailable: Redis failed or did not answer in time.
        """
        seconds = checked_timeout(timeout)
        done = self.keys.done(message_id)
        deadline = None if seconds is None else time.monotonic() + seconds
        with self.translated():
            while True:
                left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
                snapshot = self._blocking_move(done, left)
                if snapshot is not None:
                    return _decode(json.loads(snapshot))
                if deadline is not None and time.monotonic() >= deadline:
                    try:
                        state = str(self.state(message_id, timeout=WAIT_MARGIN))
                    except ResultBackendUnavailable:
                        state = "unknown"
                    raise JobTimeout(f"job {message_id} did not finish within {timeout} s (state {state})")

    def _blocking_move(self, key: str, seconds: float) -> str | None:
        """``BLMOVE key key RIGHT LEFT seconds`` (a look, ``LINDEX``, when no time is left), its
        answer awaited at most a moment past ``seconds``.

        A wait shorter than the socket timeout takes its connection from the waiting client's
        pool, whose connections connect and shake hands within that moment (a pooled
        connection of the client's within the settings' timeouts); either stays connected for
        the next wait, unless the wait failed.
        """
        bound = max(seconds, 0.0) + min(WAIT_MARGIN, self.settings.redis_socket_timeout)
        short = bound < self.settings.redis_socket_timeout
        pool = (self.redis.waiting_client if short else self.client).connection_pool
        connection = pool.get_connection()
        try:
            if seconds <= 0:
                # BLMOVE reads a timeout of 0 as "forever"; no time left means look once.
                connection.send_command("LINDEX", key, 0)
            else:
                # BLMOVE takes seconds with a millisecond resolution.
                connection.send_command("BLMOVE", key, key, "RIGHT", "LEFT", max(round(seconds, 3), 0.001))
            if not connection.can_read(timeout=bound):
                raise redis.TimeoutError(f"no answer within {seconds:.1f} s")
            return cast("str | None", connection.read_response())
        except BaseException:
            # Its answer may still come: it must never be read as the next wait's.
            connection.disconnect()
            raise
        finally:
            pool.release(connection)


#: The states of a job that waits for a time, and the field that says until when.
_WAITING = {JobState.SCHEDULED: "eta", JobState.RETRY: "next_attempt_at"}


def checked_timeout(timeout: object) -> float | None:
    """A caller's ``timeout`` as the seconds to wait: None (as long as it takes) for None,
    infinity, or any number past what a thread's wait takes (:data:`FOREVER`, ``1e308``,
    ``10**400``); 0 for no time at all, however negative.

    Raises:
      InvalidTimeout: ``timeout`` is not a number of seconds: text, a bool, or NaN (which no
        time passes, so a wait for it never ended).
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or (isinstance(timeout, float) and math.isnan(timeout))
    ):
        raise InvalidTimeout(f"timeout {shown(timeout)} is not a number of seconds (None waits as long as it takes)")
    if timeout > FOREVER:
        return None
    return float(timeout) if timeout > 0 else 0.0


def _sent_by(timeout: float | None) -> When:
    """Who sends a read: this thread when it waits as long as Redis may take; the writer's
    thread when the caller gives a timeout, which the caller's own send could not honour.
    """
    return When.NOW if timeout is None else When.SOON


def _decode(raw: Mapping[str, str]) -> JobRecord:
    """A record as stored (field to JSON text) as a dict of values, without internal or cleared
    fields; a field that is not JSON (written by hand) is kept as its text.
    """
    return cast("JobRecord", {name: _value(text) for name, text in raw.items() if name != "rank" and text != "null"})


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def get_store(settings: Settings | None = None) -> RecordStore:
    """The record store for ``settings`` (the process's settings, read on first use, when
    omitted), one per settings.
    """
    return _store_of(settings or PROCESS_SETTINGS)


@functools.cache
def _store_of(settings: Settings) -> RecordStore:
    return RecordStore(get_redis(settings))

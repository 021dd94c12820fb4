"""One thread's pipelined record writes: the write script, the connection, the unread answers.

Record writes are the hot path of every job. Each thread sends them on a connection of its own,
outside the pool, and reads their answers later, in order (Redis pipelining): every answer is
consumed and matched to its write, an error reply included, and a write Redis refused or whose
answer was lost is handed back to the store to be kept, when its caller asked for that.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import threading
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

import redis

from pipeline.errors import ResultBackendUnavailable
from pipeline.states import FAILURE_RANK, FINAL_RANK, SUCCESS_RANK, JobState
from pipeline.store.keys import FAILURE_TTL

if TYPE_CHECKING:
    from pipeline.store.records import RecordStore

#: One write: the script's keys and arguments.
WriteCall = tuple[list[str], list[Any]]

#: Record writes a thread may have sent without reading their answers yet.
MAX_UNREAD_WRITES = 64
#: Writes a thread may hold back to send together (see :attr:`WriteLine.held`); one more sends
#: them all.
MAX_HELD_WRITES = 32
#: Error replies that pass (memory, a replica, a loading or busy server): a write that got one
#: is kept and written again; any other error reply is final. redis-py turns some codes into
#: types (and strips the code), the others stay in the text.
PASSING_REPLY_TYPES = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.NoScriptError,
    redis.exceptions.TryAgainError,
)
PASSING_REPLY_CODES = ("MISCONF", "BUSY", "MASTERDOWN")


def json_value(value: Any) -> str:
    """``value`` as JSON, as ``json.dumps`` writes it; a record write's field values.

    Strings, integers and None (nearly every field) skip ``json.dumps``'s own dispatch, which
    is most of its cost for one small value.
    """
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return json.dumps(value)


def passes(reply: redis.ResponseError) -> bool:
    """Whether Redis may take the write that got this error reply later."""
    return isinstance(reply, PASSING_REPLY_TYPES) or str(reply).startswith(PASSING_REPLY_CODES)


#: Writes fields unless the record is final or ranks above the write. KEYS: record, done list,
#: index prefix. ARGV: rank ('' keeps the record's, and then needs a record), ttl seconds, the
#: writer's clock in Unix microseconds, then field, value, ...
#: On reaching a final state it pushes a JSON snapshot of the record onto the done list, which
#: waiters read with BLMOVE from the list onto itself, so every waiter sees it and none takes it.
#: The record is read once, whole, and the snapshot is that read with the write laid over it:
#: each Redis call from Lua costs more than the command itself.
#: When the state changes, the job moves to its new state's sorted set in the index (scored by
#: the writer's clock); a new record also joins its actor's set. About one add in sixteen (by
#: the clock's microseconds) also drops the set's members older than their records can live,
#: which keeps every set bounded without a SCAN and at little cost per write.
#: Returns {applied (0/1), state JSON or false}. Its shebang makes Redis 7 refuse it on a
#: read-only replica (a primary demoted by a failover) even when it would write nothing, so a
#: connection left on the old primary fails and is opened again to the new one.
WRITE_SCRIPT = (
    """#!lua
local flat = redis.call('HGETALL', KEYS[1])
local record = {}
for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
local current, before = tonumber(record['rank']), record['state']
local new = tonumber(ARGV[1])
if new == nil then
  if current == nil then return {0, false} end
  new = current
end
if current ~= nil then
  if (current >= FINAL_RANK and not (current == FAILURE_RANK and new == SUCCESS_RANK))
      or (current < FINAL_RANK and new < current) then
    return {0, before}
  end
end
redis.call('HSET', KEYS[1], 'rank', new, unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
record['rank'] = tostring(new)
for i = 4, #ARGV, 2 do record[ARGV[i]] = ARGV[i + 1] end
local after, actor = record['state'], record['actor']
if new >= FINAL_RANK and (current == nil or current ~= new) then
  if current ~= nil and current >= FINAL_RANK then redis.call('DEL', KEYS[2]) end
  redis.call('RPUSH', KEYS[2], cjson.encode(record))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if after and after ~= before then
  local score = tonumber(ARGV[3])
  local id = string.match(KEYS[1], '([^:]+)$')
  if before then redis.call('ZREM', KEYS[3] .. ':' .. string.sub(before, 2, -2), id) end
  local into = KEYS[3] .. ':' .. string.sub(after, 2, -2)
  redis.call('ZADD', into, score, id)
  local prune = score % 16 == 0
  if prune then redis.call('ZREMRANGEBYSCORE', into, '-inf', score - tonumber(ARGV[2]) * 1000000) end
  if actor and not before then
    local by_actor = KEYS[3] .. ':actor:' .. cjson.decode(actor)
    redis.call('ZADD', by_actor, score, id)
    if prune then
      redis.call('ZREMRANGEBYSCORE', by_actor, '-inf', score - math.max(tonumber(ARGV[2]), FAILURE_TTL) * 1000000)
    end
  end
end
return {1, after}
""".replace("FAILURE_RANK", str(FAILURE_RANK))
    .replace("FAILURE_TTL", str(FAILURE_TTL))
    .replace("SUCCESS_RANK", str(SUCCESS_RANK))
    .replace("FINAL_RANK", str(FINAL_RANK))
)


class WriteLine:
    """One thread's own Redis connection for record writes, outside the pool.

    Writes are the hot path of every job; a connection of its own spares them the pool's lock
    and lets writes be sent now and their answers read later, in order (Redis pipelining). Its
    thread reads the answers with its next writes; once the line has been idle for a moment,
    another thread may read them (see :meth:`~pipeline.store.records.RecordStore.settle_idle_lines`),
    holding :attr:`lock`, which the line's own thread holds while it uses the line.
    """

    def __init__(self, connection: redis.Connection) -> None:
        self.connection = connection
        self.pid = os.getpid()
        self.unread: collections.deque[PendingWrite] = collections.deque()
        #: True until a write went out on the connection: a fresh connection that fails is
        #: not tried again at once (Redis is away, not an idle connection closed).
        self.fresh = True
        self.lock = threading.RLock()
        #: When the last write went out (``time.monotonic()``).
        self.last_sent = 0.0
        #: Writes held back, to go out together in one send (unconfirmed sends' records).
        self.held: list[PendingWrite] = []
        #: When the oldest held write was made (``time.monotonic()``).
        self.held_since = 0.0

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Send ``commands`` in one write to the socket, without reading their answers. A fresh
        connection is opened through its own ``connect``, which a Sentinel-managed connection
        needs to find the current primary (sending first would open it to the default host).
        """
        if self.fresh:
            self.connection.connect()
        self.connection.send_packed_command(self.connection.pack_commands(commands))

    def read_all(self, wait: float | None = None) -> None:
        """Read the answer of every write sent on the line (see :meth:`PendingWrite.settle`)."""
        with self.lock:
            while self.unread:
                self.unread[-1].settle(wait)

    def drop_connection(self) -> list[PendingWrite]:
        """Close the connection (a new one opens on the next write).

        Returns:
          The writes whose answers were lost with it, oldest first.
        """
        lost = list(self.unread)
        self.unread.clear()
        self.connection.disconnect()
        self.fresh = True
        return lost


class PendingWrite:
    """A record write sent to Redis whose answer has not been read yet; see :meth:`result`."""

    def __init__(
        self,
        store: RecordStore,
        line: WriteLine,
        call: WriteCall,
        keep: bool,
        on_lost: Callable[[ResultBackendUnavailable], object] | None = None,
    ) -> None:
        self._store = store
        self._line = line
        self._call = call
        self._keep = keep
        self._on_lost = on_lost
        #: The command that makes the write, set by the store before it is sent.
        self.command: tuple[Any, ...] = ()
        self._outcome: tuple[bool, JobState] | None = None
        self._error: redis.RedisError | None = None
        #: Turns the answer into the outcome: the write script's by default.
        self.parse: Callable[[Any], tuple[bool, JobState]] = script_reply

    @property
    def settled(self) -> bool:
        """True once the answer is known (or the write failed, or was kept)."""
        return self._outcome is not None or self._error is not None

    def lost(self, error: redis.RedisError) -> None:
        """Redis did not take this write (or its answer was lost): keep it, or remember why (and
        tell ``on_lost``, for a write whose answer nobody waits for).
        """
        if self._keep:
            self._store.keep(self._call)
            self._outcome = (False, JobState.PENDING)
        else:
            self._error = error
            if self._on_lost is not None:
                self._on_lost(self._store.redis.unavailable(error))

    def settle(self, wait: float | None = None) -> None:
        """Read this write's answer, and those of the writes sent before it on the connection.

        Every answer is consumed and matched to its write, an error reply included, so a later
        answer is never taken for an earlier write's.

        Parameters:
          wait: Seconds to wait at most for the answer; None: the socket timeout. An answer
            not there in time is taken as lost, with the connection.
        """
        line = self._line
        with line.lock:
            self._read_answers(wait)

    def _read_answers(self, wait: float | None) -> None:
        line = self._line
        while not self.settled and self in line.unread:
            oldest = line.unread[0]
            try:
                if wait is not None and not line.connection.can_read(timeout=wait):
                    raise redis.TimeoutError(f"no answer within {wait} s")
                reply = line.connection.read_response()
            except redis.exceptions.NoScriptError:
                # Redis lost its script cache (a restart): load it and send the write again.
                line.unread.popleft()
                try:
                    self._store.client.script_load(WRITE_SCRIPT)
                except redis.RedisError as exc:
                    oldest.lost(exc)
                    continue
                self._store.send_call(oldest._call, oldest._keep, pending=oldest)
                continue
            except redis.ResponseError as exc:
                line.unread.popleft()
                oldest.lost(exc)
                continue
            except redis.RedisError as exc:
                for lost in line.drop_connection():
                    lost.lost(exc)
                continue
            line.unread.popleft()
            oldest._outcome = oldest.parse(reply)

    def result(self, wait: float | None = None) -> tuple[bool, JobState]:
        """Wait for Redis's answer: whether the write applied, and the record's state after it.

        Parameters:
          wait: Seconds to wait at most (see :meth:`settle`).

        Raises:
          ResultBackendUnavailable: Redis failed, or did not answer in time.
        """
        self.settle(wait)
        if self._error is not None:
            raise self._store.redis.unavailable(self._error)
        if self._outcome is None:
            raise ResultBackendUnavailable("the answer to a record write was lost")
        return self._outcome

    def cancel(self) -> None:
        """Stop waiting for the answer: read and drop it (the write stands either way)."""
        with contextlib.suppress(ResultBackendUnavailable):
            self.result()


def script_reply(reply: list[Any]) -> tuple[bool, JobState]:
    """The write script's answer: whether the write applied, and the record's state after it."""
    applied, stored = reply
    return bool(applied), JobState(json.loads(stored)) if stored else JobState.PENDING


def state_reply(stored: str | None) -> tuple[bool, JobState]:
    """An ``HGET`` of the state as the same pair (``PENDING`` when there is no record)."""
    return True, JobState(json.loads(stored)) if stored else JobState.PENDING

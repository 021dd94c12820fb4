"""The record write script, how its arguments are encoded, and how its answers are read."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

import redis

from pipeline.states import FAILURE_RANK, FINAL_RANK, SUCCESS_RANK, JobState, state_named
from pipeline.store.keys import FAILURE_TTL

#: One write: the script's keys and arguments.
WriteCall = tuple[list[str], list[Any]]

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
#: index prefix, and optionally a key of the job that must live at least as long as the record
#: from now on (a claim, while a retry waits; one that does not exist is left so). ARGV: rank
#: ('' keeps the record's, and then needs a record), ttl seconds, the writer's clock in Unix
#: microseconds, then field, value, ...
#: On reaching a final state it pushes a JSON snapshot of the record onto the done list, which
#: waiters read with BLMOVE from the list onto itself, so every waiter sees it and none takes it.
#: The record is read once, whole, and the snapshot is that read with the write laid over it:
#: each Redis call from Lua costs more than the command itself.
#: When the state changes, the job moves to its new state's sorted set in the index (scored by
#: the writer's clock); a new record also joins its actor's set. About one add in sixteen (by
#: the clock's microseconds) also drops the set's members older than their records can live,
#: which keeps every set bounded without a SCAN and at little cost per write. A record that
#: waits (SCHEDULED, RETRY: due later) lives past that age, so the sets that hold such records
#: (those two states', and the actors') drop only the old members whose records are gone, up to
#: 64 at a time, and score a live one anew just inside the age, to be looked at again later.
#: Returns {applied (0/1), state JSON or false}. Its shebang makes Redis 7 refuse it on a
#: read-only replica (a primary demoted by a failover) even when it would write nothing, so a
#: connection left on the old primary fails and is opened again to the new one.
WRITE_SCRIPT = (
    """#!lua
local function prune(set, horizon, records, checked)
  if not checked then
    redis.call('ZREMRANGEBYSCORE', set, '-inf', horizon)
    return
  end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', horizon, 'LIMIT', 0, 64)) do
    if redis.call('EXISTS', records .. member) == 1 then
      redis.call('ZADD', set, horizon + 1, member)
    else
      redis.call('ZREM', set, member)
    end
  end
end
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
if KEYS[4] then
  local left = redis.call('TTL', KEYS[4])
  if left >= 0 and left < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[4], ARGV[2]) end
end
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
  local pruned = score % 16 == 0
  local records = string.sub(KEYS[1], 1, #KEYS[1] - #id)
  local waits = after == 'SCHEDULED_JSON' or after == 'RETRY_JSON'
  if pruned then prune(into, score - tonumber(ARGV[2]) * 1000000, records, waits) end
  if actor and not before then
    local by_actor = KEYS[3] .. ':actor:' .. cjson.decode(actor)
    redis.call('ZADD', by_actor, score, id)
    if pruned then
      prune(by_actor, score - math.max(tonumber(ARGV[2]), FAILURE_TTL) * 1000000, records, true)
    end
  end
end
return {1, after}
""".replace("SCHEDULED_JSON", json.dumps(JobState.SCHEDULED.value))
    .replace("RETRY_JSON", json.dumps(JobState.RETRY.value))
    .replace("FAILURE_RANK", str(FAILURE_RANK))
    .replace("FAILURE_TTL", str(FAILURE_TTL))
    .replace("SUCCESS_RANK", str(SUCCESS_RANK))
    .replace("FINAL_RANK", str(FINAL_RANK))
)


def script_reply(reply: list[Any]) -> tuple[bool, JobState]:
    """The write script's answer: whether the write applied, and the record's state after it."""
    applied, stored = reply
    return bool(applied), JobState(json.loads(stored)) if stored else JobState.PENDING


def stored_state(stored: str | None) -> JobState:
    """The state an ``HGET`` of a record's ``state`` field read: ``PENDING`` when there is no
    record, or its field is not a state.
    """
    if not stored:
        return JobState.PENDING
    try:
        return state_named(json.loads(stored))
    except ValueError:
        return JobState.PENDING

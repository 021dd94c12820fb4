"""One mail rate limit for every worker process and host, kept in Redis.

Each mail asks for a slot just before it is sent. Slots are spread evenly, one every window
divided by the limit (50/s: one every 20 ms), so the relay sees at most that many mails in any
window and never a burst. A mail that gets no slot joins the waiters, by priority, then by when it
first asked; while a waiter of higher priority is there, a lower one gets no slot even when one
is free, so a password reset waiting behind a newsletter gets the next one. Each waiter is told
to ask again when its own turn comes (its rank among the waiters times the interval), so a slot
that frees wakes one waiter, not all of them. A waiter that stopped asking (its worker died) is
dropped after a few seconds.

Before a mail job starts, it looks when its turn would come. The look counts the waiters ahead
of it, the mails that passed their own look and have not taken their slot yet, and the mails
sent back to the schedule before it: a burst of mails that look at once is told turns one
interval apart, and those whose turn is far go back to the schedule until that turn rather than
waiting for it in a thread, holding a connection. Each comes back once, when its turn is near,
and keeps its place when it looks again. A mail that passed its look is counted until it takes
its slot, gives it up, or is a few seconds past its turn; one sent back, until it looks again or
is a few seconds past its due time.

When the relay throttles (see :class:`~pipeline.errors.SmtpThrottled`), a shared pause of two
seconds stops every worker's mail; the throttled mail is retried after it.
"""

from __future__ import annotations

import functools
from typing import cast

import redis.commands.core

from pipeline.store.connection import RedisConnection

#: KEYS: sends, waiting (by priority, then first ask), waiting (by last ask), pause, the count of
#: first asks, passed (by priority, then turn), sent back (by priority, then turn), sent back (by
#: turn), passed (by turn). ARGV: window (ms), limit, job id, priority, the milliseconds after
#: which a silent waiter, or a passed or sent-back mail past its turn, is dropped, 1 to take the
#: slot (0 only to look), the longest turn (ms) a look lets pass. Time is Redis's own, so hosts
#: whose clocks differ share one window. A waiter's score is its priority times 2^42 less the
#: number of its first ask: a higher priority first, then the one that asked first. A passed or
#: sent-back mail's score is 255 less its priority, times 2^42, plus the time of its turn (ms):
#: the lower, the sooner.
#: Returns 0 when a slot is free (taken, and counted as sent, when asked to), else the
#: milliseconds to wait: for a waiter, until its own turn. A look whose turn is at most the
#: longest a look lets pass counts the mail as passed until it takes its slot; a look whose turn
#: is further counts it as sent back until it looks again.
ACQUIRE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local id, priority = ARGV[3], tonumber(ARGV[4])
local scale = 4398046511104
-- Joins the waiters once, behind those of its priority that asked first.
local function join()
  if not redis.call('ZSCORE', KEYS[2], id) then
    local order = redis.call('INCR', KEYS[5]) % scale
    redis.call('ZADD', KEYS[2], priority * scale + (scale - 1 - order), id)
  end
end
-- Waiters, passed and sent-back mails are each kept in a pair of sets: one in the order they
-- count in, one by time alone (a waiter's last ask, a mail's turn), to drop those long past it.
local function drop_late(ordered, by_time)
  local late = redis.call('ZRANGEBYSCORE', by_time, '-inf', now - tonumber(ARGV[5]))
  for _, gone in ipairs(late) do
    redis.call('ZREM', ordered, gone)
    redis.call('ZREM', by_time, gone)
  end
end
-- Puts this mail in a pair of sets (ordered by its score, timed by its turn), for ``life`` ms.
local function keep(ordered, by_time, score, at, life)
  redis.call('ZADD', ordered, string.format('%.0f', score), id)
  redis.call('ZADD', by_time, at, id)
  redis.call('PEXPIRE', ordered, life)
  redis.call('PEXPIRE', by_time, life)
end
local function forget(ordered, by_time)
  redis.call('ZREM', ordered, id)
  redis.call('ZREM', by_time, id)
end
drop_late(KEYS[2], KEYS[3])
drop_late(KEYS[6], KEYS[9])
drop_late(KEYS[7], KEYS[8])
-- A mail that looks again, or asks to take its slot (and takes it, or waits among the waiters),
-- is no longer only passed.
forget(KEYS[6], KEYS[9])
local paused = redis.call('PTTL', KEYS[4])
local wait = 0
if paused > 0 then
  wait = paused
elseif limit <= 0 then
  return 0
else
  -- Slots are spread evenly, one every window/limit: no burst, so no window ever holds more.
  local interval = window / limit
  local free_at = tonumber(redis.call('GET', KEYS[1]) or '0')
  if ARGV[6] ~= '1' then
    -- A look: how long until this job's turn, behind the waiters of its priority or higher.
    local ahead = redis.call('ZCOUNT', KEYS[2], priority * scale, '+inf')
    if redis.call('ZSCORE', KEYS[2], id) then ahead = ahead - 1 end
    -- And behind the mails that passed their look or were sent back to the schedule before it:
    -- those of a higher priority, and those of its own whose turn comes first. Their scores are
    -- 255 less the priority, times 2^42, plus the time (ms) of their turn. A mail back from the
    -- schedule keeps its place: it counts those ahead of the turn it was given.
    local band = (255 - math.max(0, math.min(255, priority))) * scale
    local mine = redis.call('ZSCORE', KEYS[7], id)
    local before = mine or string.format('%.0f', band + scale)
    ahead = ahead + redis.call('ZCOUNT', KEYS[7], '-inf', '(' .. before)
    ahead = ahead + redis.call('ZCOUNT', KEYS[6], '-inf', '(' .. before)
    local turn = math.ceil(math.max(0, free_at - now) + ahead * interval)
    local at = now + turn
    if turn <= tonumber(ARGV[7]) then
      keep(KEYS[6], KEYS[9], band + at, at, 60000)
      if mine then forget(KEYS[7], KEYS[8]) end
    else
      -- Sent back to the schedule until its turn, where the mails that look after it count it.
      keep(KEYS[7], KEYS[8], band + at, at, 60000 + turn)
    end
    return turn
  end
  local top = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local ahead = top[1] and top[1] ~= id and math.floor(tonumber(top[2]) / scale) > priority
  if now >= free_at and not ahead then
    -- A slot taken late leaves the next where it was due: the waiters woken for it find it
    -- free. Each slot is still taken within its interval, so no window holds one more.
    local next_at = now + interval
    if now - free_at < interval then next_at = free_at + interval end
    redis.call('SET', KEYS[1], tostring(next_at), 'PX', math.ceil(interval) + 1000)
    forget(KEYS[2], KEYS[3])
    return 0
  end
  -- Its turn: when the next slot frees, one interval more for each waiter before it.
  join()
  local rank = redis.call('ZREVRANK', KEYS[2], id)
  wait = math.ceil(math.max(free_at - now, 0) + rank * interval)
end
if ARGV[6] ~= '1' then return math.max(wait, 1) end
if paused > 0 then join() end
redis.call('ZADD', KEYS[3], now, id)
redis.call('PEXPIRE', KEYS[2], 60000)
redis.call('PEXPIRE', KEYS[3], 60000)
return math.max(wait, 1)
"""

#: KEYS: pause. ARGV: the pause (ms). A pause already running is left as it is: the workers
#: that were throttled together pause once. Returns the pause's time left.
PAUSE_SCRIPT = """
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return left end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return tonumber(ARGV[1])
"""

#: Milliseconds after which a waiter that stopped asking, a passed mail past its turn, or a mail
#: sent back past its due time is dropped.
WAITER_STALE_MS = 5_000
#: The shared pause after the relay throttled (ms).
PAUSE_MS = 2_000
#: Slots are spread this much wider than the limit alone asks: what arrives at the relay
#: drifts from when its slot was taken (one round trip, longer on a busy machine), which must
#: not add up to a mail more than the limit in a window. Four workers held to 50/s on a busy
#: machine of two cores saw 56 to 58 mails in their busiest second with 4% to spare and the slot
#: taken before the SMTP transaction; 51 to 55 with it taken before the content; 49 to 53 with
#: that and 8%.
SPREAD = 1.08


class MailRate:
    """The deployment's mail rate limit.

    Parameters:
      redis: The Redis of the records.
      limit: Mails per window (0: no limit, only the shared pause).
      window: The window, in seconds.
    """

    def __init__(self, redis: RedisConnection, limit: int, window: int) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window

    def acquire(self, message_id: str, priority: int) -> float:
        """Take a slot for ``message_id``'s mail now (0.0), or the seconds to wait before asking
        again.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        return self._run(message_id, priority, take=True, passes_within=0.0)

    def look(self, message_id: str, priority: int, passes_within: float) -> float:
        """The seconds until ``message_id``'s mail would get a slot (0.0: now), without taking
        one. A turn at most ``passes_within`` away lets the mail pass: it is counted ahead of the
        mails that look after it until it takes its slot (:meth:`acquire`), gives it up
        (:meth:`give_up`) or is :data:`WAITER_STALE_MS` past its turn. A further turn counts it
        as sent back to the schedule, until it looks again, or is that long past its turn.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        return self._run(message_id, priority, take=False, passes_within=passes_within)

    def give_up(self, message_id: str) -> None:
        """``message_id`` passed its look but sends no mail: it is no longer counted.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        keys = self.redis.keys
        with self.redis.translated():
            pipe = self.redis.client.pipeline(transaction=False)
            pipe.zrem(keys.mail_passed, message_id)
            pipe.zrem(keys.mail_passed_turns, message_id)
            pipe.execute()

    def _run(self, message_id: str, priority: int, take: bool, passes_within: float) -> float:
        keys = self.redis.keys
        with self.redis.translated():
            waited = self._acquire(
                keys=[
                    keys.mail_sends,
                    keys.mail_waiting,
                    keys.mail_waiting_seen,
                    keys.mail_pause,
                    keys.mail_order,
                    keys.mail_passed,
                    keys.mail_sent_back,
                    keys.mail_sent_back_due,
                    keys.mail_passed_turns,
                ],
                args=[
                    self.window * 1000 * SPREAD,
                    self.limit,
                    message_id,
                    priority,
                    WAITER_STALE_MS,
                    int(take),
                    int(passes_within * 1000),
                ],
            )
        return cast("int", waited) / 1000

    @functools.cached_property
    def _acquire(self) -> redis.commands.core.Script:
        # Sent by its digest (EVALSHA), loaded again when Redis forgot it: not the whole script
        # with every mail.
        return self.redis.client.register_script(ACQUIRE_SCRIPT)

    @functools.cached_property
    def _pause(self) -> redis.commands.core.Script:
        return self.redis.client.register_script(PAUSE_SCRIPT)

    def pause(self) -> float:
        """Pause every worker's mail: the relay throttled. The pause's length in seconds."""
        with self.redis.translated():
            key = self.redis.keys.mail_pause
            paused = self._pause(keys=[key], args=[PAUSE_MS])
        return cast("int", paused) / 1000

"""The worker's side of the mail rate limit and of the relay's throttling (see
:mod:`pipeline.store.mail_rate`).

Before a mail job starts, it looks when its turn comes, behind the mails waiting for a slot and
those that passed their look or were sent back before it. A turn a moment away it waits for in
its thread, before it opens a connection; a later one it does not: the message goes back to the
schedule, due just before its turn, and the delivery is acknowledged. No retry is spent, the
record says what the mail waits for (``waiting_for``, ``waiting_until``), and when it comes back
it looks again, in the place it had, behind any mail of higher priority. The slot itself is
taken by :meth:`MailRateLimit.pace`, which the mailer calls once the relay has taken the mail's
envelope, right before its content: the relay has the mail one round trip after its slot,
however long the connection and the envelope took on a busy machine, so what it counts is the
rate the slots were taken at. As the look counted the mails that passed it, a burst that looks at
once is spread over the schedule rather than over the connections: the connection waits only for
the drift between a turn and its slot. A job whose mail the relay throttled pauses every worker's
mail.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from pipeline.errors import ResultBackendUnavailable, SmtpThrottled
from pipeline.jobs.options import BROKER_PRIORITY_OPTION, RATE_LIMITED_OPTION, RATE_WAIT_OPTION
from pipeline.settings import Settings, parse_rate
from pipeline.store.mail_rate import MailRate
from pipeline.store.records import RecordStore
from pipeline.timestamps import iso_from_millis

logger = logging.getLogger(__name__)

#: Seconds a worker thread waits for a slot itself at most; a longer wait goes to the schedule.
HOLD_AT_MOST = 1.0
#: Seconds before its turn a mail sent back to the schedule comes back: what the schedule and the
#: delivery take is then no slot lost.
COME_BACK_BEFORE = 0.1
#: Seconds a worker without a rate limit trusts what it last learnt of the shared pause: the
#: relay's throttling reaches every worker within this, and a mail costs no round trip for it.
PAUSE_KNOWN_FOR = 0.1


class MailRateLimit(Middleware):
    """Holds the jobs of rate-limited actors (``rate_limited=True``) to the deployment's rate.

    Parameters:
      settings: Give ``PIPELINE_MAIL_RATE_LIMIT``.
      store: The job records.
    """

    def __init__(self, settings: Settings, store: RecordStore) -> None:
        self.settings = settings
        self.store = store
        # The priority of each running mail job, for the slot taken before its send.
        self._priorities: dict[str, int] = {}
        # The running mail jobs that passed their look and have not asked for their slot yet.
        self._passed: set[str] = set()
        # Without a limit: when the shared pause was last looked at, and until when it runs
        # (time.monotonic()).
        self._pause_seen_at = -PAUSE_KNOWN_FOR
        self._paused_until = 0.0

    @property
    def actor_options(self) -> set[str]:
        """Declares ``rate_limited``."""
        return {RATE_LIMITED_OPTION}

    @functools.cached_property
    def rate(self) -> MailRate:
        """The limit (read from the settings on first use; without one, only the shared pause)."""
        limit, window = parse_rate(self.settings.mail_rate_limit) if self.settings.mail_rate_limit else (0, 1)
        return MailRate(self.store.redis, limit, window)

    def _limited(self, broker: dramatiq.Broker, message: MessageProxy) -> bool:
        actor = broker.actors.get(message.actor_name)
        return actor is not None and bool(actor.options.get(RATE_LIMITED_OPTION))

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Wait for a slot a moment, or send the message back to wait for it in the schedule."""
        if not self._limited(broker, message):
            return
        priority = int(message.options.get(BROKER_PRIORITY_OPTION, 0) or 0)
        wait = self._look(message.message_id, priority)
        if wait <= HOLD_AT_MOST:
            self._priorities[message.message_id] = priority
            if self.rate.limit > 0:
                self._passed.add(message.message_id)
            # Its turn is near: waited for before a connection is opened.
            time.sleep(wait)
            if message.options.pop(RATE_WAIT_OPTION, None) is not None:
                self._note(message.message_id, waiting_for=None, waiting_until=None)
            return
        due = int((time.time() + wait) * 1000)
        later = message.copy()
        later.options[RATE_WAIT_OPTION] = due
        broker.enqueue(later, delay=int((wait - COME_BACK_BEFORE) * 1000))
        limit = self.settings.mail_rate_limit
        what = f"a slot of the mail rate limit ({limit})" if limit else "the end of the pause the relay asked for"
        self._note(message.message_id, waiting_for=what, waiting_until=iso_from_millis(due))
        # Read by the worker's log filter, which says the job waits rather than that it was skipped.
        message.options[RATE_WAIT_OPTION] = due
        raise SkipMessage(f"job {message.message_id} waits for the mail rate limit")

    def pace(self, message_id: str) -> None:
        """Take ``message_id``'s slot, waiting for it in this thread: right before the mail's
        content goes to the relay, which has taken its envelope. Without a limit there is no
        slot to take: the look before the job began saw any pause.
        """
        if self.rate.limit <= 0:
            return
        priority = self._priorities.get(message_id, 0)
        self._passed.discard(message_id)
        while wait := self._ask(message_id, priority, take=True):
            time.sleep(wait)

    def _look(self, message_id: str, priority: int) -> float:
        """Seconds until ``message_id``'s turn (0.0: now); a turn at most :data:`HOLD_AT_MOST`
        away passes the mail (see :meth:`MailRate.look`). Without a limit only the shared pause
        counts, which is looked at in Redis once every :data:`PAUSE_KNOWN_FOR` seconds.
        """
        if self.rate.limit > 0:
            return self._ask(message_id, priority, take=False)
        now = time.monotonic()
        if now - self._pause_seen_at >= PAUSE_KNOWN_FOR:
            # Noted before the ask: the threads that start while it is on its way trust what is
            # known, rather than all asking too.
            self._pause_seen_at = now
            self._paused_until = now + self._ask(message_id, priority, take=False)
        return max(0.0, self._paused_until - now)

    def _ask(self, message_id: str, priority: int, take: bool) -> float:
        """The limit's answer (see :meth:`MailRate.acquire`); 0.0 when Redis cannot say: a mail
        never waits on a Redis that is away.
        """
        try:
            if take:
                return self.rate.acquire(message_id, priority)
            return self.rate.look(message_id, priority, passes_within=HOLD_AT_MOST)
        except ResultBackendUnavailable as exc:
            logger.warning("Mail of job %s goes out without the rate limit: %s", message_id, exc)
            return 0.0

    def _note(self, message_id: str, **fields: Any) -> None:
        try:
            self.store.update(message_id, **fields)
        except ResultBackendUnavailable as exc:
            logger.debug("Job %s: waiting not recorded: %s", message_id, exc)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """A skipped job sends nothing."""
        self._done(message.message_id)

    def _done(self, message_id: str) -> None:
        """``message_id``'s job ended; if it passed its look but never asked for its slot (it
        failed before its mail, or an earlier attempt had sent it), its turn is given up.
        """
        self._priorities.pop(message_id, None)
        if message_id in self._passed:
            self._passed.discard(message_id)
            try:
                self.rate.give_up(message_id)
            except ResultBackendUnavailable as exc:
                logger.debug("Job %s: its turn for a mail slot lapses on its own: %s", message_id, exc)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Pause every worker's mail when the relay throttled this one (it is retried)."""
        self._done(message.message_id)
        if isinstance(exception, SmtpThrottled):
            try:
                pause = self.rate.pause()
            except ResultBackendUnavailable:
                return
            now = time.monotonic()
            self._pause_seen_at, self._paused_until = now, now + pause
            logger.warning("The relay throttled job %s: every worker's mail pauses %.1f s", message.message_id, pause)

"""Claims that make a side effect happen at most once per job, whatever the redeliveries.

Before a job does something that must not be done twice (send a mail), it claims the job's id
in Redis; once done, it marks the claim done with the outcome. A later attempt of the same job
(a retry after a lost reply, a redelivery after the worker died between the deed and its ack)
finds the claim and does not act again: it returns the recorded outcome, or, if the earlier
attempt was cut off mid-deed, says the outcome is unknown.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from typing import Any, TypedDict, cast

import redis

from pipeline.store.connection import RedisConnection
from pipeline.store.writer import Answer, RedisWriter, When

logger = logging.getLogger(__name__)


class ClaimState(enum.StrEnum):
    """Where a claimed deed stands."""

    #: Claimed by an attempt that has not finished (or was cut off).
    IN_PROGRESS = "in_progress"
    #: Done for some recipients; others were deferred and wait for a later attempt.
    PARTIAL = "partial"
    #: Done; the claim holds the outcome.
    DONE = "done"


class Claim(TypedDict, total=False):
    """An existing claim: its state, and the deed's outcome once done."""

    state: str
    outcome: Any


class Claims:
    """Claims on job ids in one Redis database, kept as long as the job records and a retry's
    longest backoff (``PIPELINE_RETRY_MAX_BACKOFF``); a job's ``RETRY`` record write keeps its
    claim as long as the record, for a message whose own backoff is longer.

    Parameters:
      redis: The Redis of the job records.
      writer: The process's record writer (see :mod:`pipeline.store.writer`): claims are then
        taken with the other threads' commands sent at the same time, and a deed's done mark
        goes with the process's next writes, not in a round trip of its own.

    Every method raises ``ResultBackendUnavailable`` when Redis is unreachable (but ``done``
    with a writer, which logs it).
    """

    def __init__(self, redis: RedisConnection, writer: RedisWriter | None = None) -> None:
        self.redis = redis
        self.writer = writer
        # As long as a record, and as long as a retry may wait before it comes: a claim that
        # expired before the job's next attempt would let that attempt do the deed again.
        self.ttl = redis.settings.result_ttl + math.ceil(redis.settings.retry_max_backoff / 1000)

    def claim(self, message_id: str) -> Claim | None:
        """Claim ``message_id`` for this attempt.

        Returns:
          None when the claim is ours; a ``partial`` claim, now ours, when an earlier attempt
          did the deed for some and left the rest (its ``outcome`` says which); else the claim
          an earlier or concurrent attempt holds (``state``, and ``outcome`` once done).
        """
        key = self.redis.keys.claim(message_id)
        if self._take(key):
            return None
        with self.redis.translated(), self.redis.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                existing = cast("str | None", pipe.get(key))
                claim = cast("Claim", json.loads(existing)) if existing else {"state": ClaimState.IN_PROGRESS}
                if claim.get("state") != ClaimState.PARTIAL:
                    return claim
                # Take the rest of the deed over, so that a concurrent copy finds it in progress.
                pipe.multi()
                taken = {"state": ClaimState.IN_PROGRESS, "outcome": claim.get("outcome")}
                pipe.set(key, json.dumps(taken), ex=self.ttl)
                pipe.execute()
                return claim
            except redis.WatchError:
                return {"state": ClaimState.IN_PROGRESS}

    def _take(self, key: str) -> bool:
        """Whether the claim ``key`` was free and is now this attempt's."""
        claim = json.dumps({"state": ClaimState.IN_PROGRESS})
        if self.writer is None:
            with self.redis.translated():
                return bool(self.redis.client.set(key, claim, nx=True, ex=self.ttl))
        # With the other threads' writes when they are sent together (many mails at once).
        taken = self.writer.submit("SET", key, claim, "NX", "EX", self.ttl)
        return bool(self.writer.answer(taken, self.redis.answer_wait))

    def done(self, message_id: str, outcome: Any) -> None:
        """Mark the deed done with its JSON-safe ``outcome``.

        With a writer, the mark is handed to it and not awaited: the job's own record write,
        which follows, takes it along. A mark Redis does not take is logged; the claim then
        stays in progress, which still blocks any second deed.
        """
        claim = json.dumps({"state": ClaimState.DONE, "outcome": outcome})
        key = self.redis.keys.claim(message_id)
        if self.writer is not None:
            mark = self.writer.submit("SET", key, claim, "EX", self.ttl, when=When.LATER)
            mark.add_done_callback(lambda answer: _log_unmarked(message_id, answer))
            return
        with self.redis.translated():
            self.redis.client.set(key, claim, ex=self.ttl)

    def partial(self, message_id: str, outcome: Any) -> None:
        """Mark the deed done in part, with the ``outcome`` so far: a later attempt does the rest."""
        claim = json.dumps({"state": ClaimState.PARTIAL, "outcome": outcome})
        with self.redis.translated():
            self.redis.client.set(self.redis.keys.claim(message_id), claim, ex=self.ttl)

    def release(self, message_id: str) -> None:
        """Give the claim up: the deed certainly did not happen, and a later attempt may do it."""
        with self.redis.translated():
            self.redis.client.delete(self.redis.keys.claim(message_id))


def _log_unmarked(message_id: str, answer: Answer[Any]) -> None:
    error = answer.exception()
    if error is not None:
        logger.warning("The deed of job %s is done, but its claim could not be marked done: %s", message_id, error)

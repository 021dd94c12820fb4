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
from typing import Any

from pipeline.records import RecordStore

#: Prefix of claim keys; the full key is ``<prefix><message_id>``.
CLAIM_PREFIX = "pipeline:claim:"


class ClaimState(enum.StrEnum):
    """Where a claimed deed stands."""

    #: Claimed by an attempt that has not finished (or was cut off).
    IN_PROGRESS = "in_progress"
    #: Done; the claim holds the outcome.
    DONE = "done"


class Claims:
    """Claims on job ids in one Redis database.

    Parameters:
      store: The job records' store, whose Redis holds the claims, kept as long as records.

    Every method raises ``ResultBackendUnavailable`` when Redis is unreachable.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.ttl = store.settings.result_ttl

    def claim(self, message_id: str) -> dict[str, Any] | None:
        """Claim ``message_id`` for this attempt.

        Returns:
          None when the claim is ours; the existing claim (``state``, and ``outcome`` once
          done) when an earlier attempt holds it.
        """
        key = CLAIM_PREFIX + message_id
        with self.store.translated():
            if self.store.client.set(key, json.dumps({"state": ClaimState.IN_PROGRESS}), nx=True, ex=self.ttl):
                return None
            existing = self.store.client.get(key)
        return json.loads(existing) if existing else {"state": ClaimState.IN_PROGRESS}

    def done(self, message_id: str, outcome: Any) -> None:
        """Mark the deed done with its JSON-safe ``outcome``."""
        claim = json.dumps({"state": ClaimState.DONE, "outcome": outcome})
        with self.store.translated():
            self.store.client.set(CLAIM_PREFIX + message_id, claim, ex=self.ttl)

    def release(self, message_id: str) -> None:
        """Give the claim up: the deed certainly did not happen, and a later attempt may do it."""
        with self.store.translated():
            self.store.client.delete(CLAIM_PREFIX + message_id)

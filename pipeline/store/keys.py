"""Every Redis key and channel pipeline uses, under one namespace prefix.

The prefix is ``PIPELINE_NAMESPACE`` (``pipeline`` by default) followed by ``:``, so two
deployments that share a Redis database keep apart by choosing different namespaces. How long
each key lives is given beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds a failed job's record lives at least: as long as RabbitMQ keeps a dead-lettered
#: message (Dramatiq's seven days), so every message in a ``.XQ`` queue can be explained.
FAILURE_TTL = 7 * 86_400


@dataclass(frozen=True)
class Keys:
    """The key layout of one namespace.

    Parameters:
      namespace: Prefix of every key and channel (without the ``:``).
    """

    namespace: str

    def record(self, message_id: str) -> str:
        """Hash holding a job's record; lives ``PIPELINE_RESULT_TTL`` seconds after its last change."""
        return f"{self.namespace}:job:{message_id}"

    def done(self, message_id: str) -> str:
        """List that receives a snapshot of the record when the job finishes; same TTL as the record."""
        return f"{self.namespace}:job:{message_id}:done"

    @property
    def index(self) -> str:
        """Prefix of the job index: ``<prefix>:<STATE>`` and ``<prefix>:actor:<name>`` are sorted
        sets of job ids scored in Unix microseconds (when a job entered the state; when its
        record was made), pruned of members older than their records can live.
        """
        return f"{self.namespace}:jobs"

    def state_index(self, state: str) -> str:
        """Sorted set of the jobs in ``state``, by when they entered it."""
        return f"{self.index}:{state}"

    def actor_index(self, actor: str) -> str:
        """Sorted set of ``actor``'s jobs, by when their records were made."""
        return f"{self.index}:actor:{actor}"

    def attempts(self, message_id: str) -> str:
        """List of a job's ended attempts, oldest first (JSON: number, start, end, state, error);
        lives as long as a failed record.
        """
        return f"{self.namespace}:job:{message_id}:attempts"

    def claim(self, message_id: str) -> str:
        """String claiming a job's one-time side effect (a mail); same TTL as the record."""
        return f"{self.namespace}:claim:{message_id}"

    @property
    def revoked(self) -> str:
        """Sorted set of revoked ids, scored by the Unix time each may be forgotten (now + record TTL)."""
        return f"{self.namespace}:revoked"

    @property
    def revocations(self) -> str:
        """Pub/sub channel on which each revoked id is announced."""
        return f"{self.namespace}:revocations"

    def send_key(self, actor_name: str, digest: str) -> str:
        """String holding the job a send's idempotency key (its SHA-256, ``digest``) went to:
        ``{"message_id", "claimed_at"}``; lives ``PIPELINE_IDEMPOTENCY_WINDOW`` seconds.
        """
        return f"{self.namespace}:send-key:{actor_name}:{digest}"

    def scheduled(self, queue_name: str) -> str:
        """Sorted set of the ids of ``queue_name``'s delayed messages, scored by due time (Unix
        milliseconds); a member is removed once its message is published.
        """
        return f"{self.namespace}:scheduled:{queue_name}"

    def scheduled_messages(self, queue_name: str) -> str:
        """Hash of the encoded delayed messages of ``queue_name``, by id; as the sorted set."""
        return f"{self.namespace}:scheduled:{queue_name}:messages"

    @property
    def workers(self) -> str:
        """Hash of the worker processes by id (``host:pid``): each one's heartbeat, a JSON
        object; an entry silent for an hour is dropped by the next listing.
        """
        return f"{self.namespace}:workers"

    @property
    def quiet_requests(self) -> str:
        """Hash of the workers told to go quiet, by id, holding the start time of the process
        meant (a later process with the same id is not quiet); entries live a day.
        """
        return f"{self.namespace}:workers:quiet"

    @property
    def mail_sends(self) -> str:
        """String holding when (Redis time, ms) the next slot of the mail rate limit is free."""
        return f"{self.namespace}:mail-rate:next"

    @property
    def mail_waiting(self) -> str:
        """Sorted set of the mail jobs waiting for a slot, scored by priority, then by first ask
        (see :data:`~pipeline.store.mail_rate.ACQUIRE_SCRIPT`). Named apart from
        ``mail-rate:waiting``, where earlier releases kept waiters by priority alone, so that the
        two never meet in a rolling deploy (both share the slots).
        """
        return f"{self.namespace}:mail-rate:queue"

    @property
    def mail_waiting_seen(self) -> str:
        """Sorted set of the same jobs, scored by when each last asked (ms); a silent one is dropped."""
        return f"{self.namespace}:mail-rate:waiting-seen"

    @property
    def mail_order(self) -> str:
        """Counter of the first asks of mails that waited for a slot: their order among waiters
        of one priority.
        """
        return f"{self.namespace}:mail-rate:order"

    @property
    def mail_passed(self) -> str:
        """Sorted set of the mail jobs that passed their look and have not taken their slot yet,
        scored by priority, then by when each one's turn comes (see
        :data:`~pipeline.store.mail_rate.ACQUIRE_SCRIPT`).
        """
        return f"{self.namespace}:mail-rate:passed"

    @property
    def mail_passed_turns(self) -> str:
        """Sorted set of the same jobs, scored by when each one's turn comes (ms); one long past
        it is dropped.
        """
        return f"{self.namespace}:mail-rate:passed-turns"

    @property
    def mail_sent_back(self) -> str:
        """Sorted set of the mail jobs sent back to the schedule until their turn, scored by
        priority, then by when each one's turn comes (see
        :data:`~pipeline.store.mail_rate.ACQUIRE_SCRIPT`).
        """
        return f"{self.namespace}:mail-rate:sent-back"

    @property
    def mail_sent_back_due(self) -> str:
        """Sorted set of the same jobs, scored by when each one's turn comes (ms); one that did
        not come back long after it is dropped.
        """
        return f"{self.namespace}:mail-rate:sent-back-due"

    @property
    def mail_pause(self) -> str:
        """String whose life is the shared pause of every worker's mail after the relay throttled."""
        return f"{self.namespace}:mail-rate:pause"

    @property
    def audit(self) -> str:
        """List of the dashboard's write actions, newest first (JSON: who, what, when, which
        jobs); the newest 10,000 are kept.
        """
        return f"{self.namespace}:audit"

    @property
    def duplicates(self) -> str:
        """Counter of messages not run because their job had finished (a re-publish); no TTL."""
        return f"{self.namespace}:stats:duplicates"

    def export(self, request_digest: str) -> str:
        """String holding the pointer of a recent export; lives ``PIPELINE_EXPORT_REUSE_WINDOW`` seconds."""
        return f"{self.namespace}:export:{request_digest}"

    def pattern(self) -> str:
        """A ``SCAN`` pattern matching every key of the namespace (for tools and tests, never the hot path)."""
        return f"{self.namespace}:*"

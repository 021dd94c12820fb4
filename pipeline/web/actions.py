"""The dashboard's write actions, each noted in the audit list (who, what, when, which jobs)."""

from __future__ import annotations

from pipeline.dead_letters import DEFAULT_LIMIT, DeadLetters, DeadMessage, Requeued, dead_letter_queues
from pipeline.errors import PipelineError
from pipeline.results import AsyncResult
from pipeline.settings import Settings
from pipeline.store.audit import AuditLog
from pipeline.store.records import get_store


class ActionRefused(PipelineError):
    """An action that cannot be done as asked; the message says why (answered with 400 or 404)."""


class Actions:
    """Write actions on jobs and dead letters, on behalf of ``who``.

    Parameters:
      settings: The deployment's settings.
      who: The caller's name, for the audit list.
    """

    def __init__(self, settings: Settings, who: str) -> None:
        self.settings = settings
        self.who = who
        self.audit = AuditLog(get_store(settings).redis)

    def revoke(self, message_id: str) -> bool:
        """Revoke a waiting or running job; False when it had already finished."""
        done = AsyncResult(message_id, self.settings).revoke()
        self.audit.add(self.who, "revoke", [message_id], "" if done else "already finished")
        return done

    def forget(self, message_id: str) -> bool:
        """Delete a job's record."""
        done = AsyncResult(message_id, self.settings).forget()
        self.audit.add(self.who, "forget", [message_id])
        return done

    def retry(self, message_id: str) -> None:
        """Put a failed job's dead-lettered message back in its queue, same id, as ``pipeline dlq
        requeue`` does.

        Raises:
          ActionRefused: No dead letter holds it (it did not fail, or its message expired), or
            none among the first 1,000 looked at.
        """
        requeued, refused, more = self.requeue(ids={message_id})
        if refused:
            raise ActionRefused(f"job {message_id}'s dead letter was not requeued: {', '.join(refused.values())}")
        if more and not requeued:
            raise ActionRefused(
                f"job {message_id} has no dead-lettered message among the first {DEFAULT_LIMIT:,} looked at, and more "
                "remain: `pipeline dlq requeue --all` takes every one"
            )
        if not requeued:
            raise ActionRefused(f"job {message_id} has no dead-lettered message to retry")

    def requeue(self, *, ids: set[str] | None = None, actor: str | None = None, queue: str | None = None) -> Requeued:
        """Requeue the dead letters of ``ids``, or of ``actor``, or all of ``queue``'s (every
        queue's when None); one no worker could run is passed over, and said why.

        Raises:
          ActionRefused: ``queue`` is not a queue of Dramatiq's on the virtual host.
        """

        def chosen(dead: DeadMessage) -> bool:
            return (ids is not None and dead.message_id in ids) or (actor is not None and dead.actor == actor)

        with DeadLetters() as letters:
            if queue is not None:
                _check_queue(letters, queue)
            requeued = letters.requeue_chosen(
                dead_letter_queues(queue), None if ids is None and actor is None else chosen
            )
        self.audit.add(
            self.who, "requeue", requeued.done, f"actor={actor}" if actor else (f"queue={queue}" if queue else "")
        )
        return requeued

    def purge(self, queue: str, confirmation: str) -> int:
        """Delete every dead letter of ``queue``; ``confirmation`` must be the queue's name.

        Raises:
          ActionRefused: The queue is unknown or the confirmation does not match.
        """
        if confirmation != queue:
            raise ActionRefused(f"type the queue's name, {queue[:60]!r}, to purge its dead letters")
        with DeadLetters() as letters:
            _check_queue(letters, queue)
            (dead,) = dead_letter_queues(queue)
            purged = int(letters.channel.queue_purge(dead).method.message_count)
        self.audit.add(self.who, "purge", [], f"{dead}: {purged} messages")
        return purged


def _check_queue(letters: DeadLetters, queue: str) -> None:
    """Refuse a name that names no queue of Dramatiq's on the virtual host (see
    :meth:`~pipeline.dead_letters.DeadLetters.queue_problem`).

    Raises:
      ActionRefused: Saying why.
    """
    problem = letters.queue_problem(queue)
    if problem is not None:
        raise ActionRefused(problem)

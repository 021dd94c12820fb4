"""The middleware that keeps each job's record through its life, on every path a message takes.

It must stand before :class:`~pipeline.jobs.retries.PipelineRetries` in the broker's list:
Dramatiq runs ``after_*`` hooks in reverse order, so the record is written once the retry
decision is made (a test fails when the order is changed). What it learns from the other
middleware it reads on the message: ``message.failed``, the retry count, and the due time of a
retry the broker noted (``retry_due``).

Redis being away never stops a job: a sender logs one line and the worker writes the record;
a worker keeps the writes Redis did not take and :class:`~pipeline.jobs.catch_up.CatchUp`
makes them when it is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware, SkipMessage

from pipeline.errors import JobInterrupted, JobStopped, ResultBackendUnavailable
from pipeline.job_id import is_job_id
from pipeline.job_record import JobError, error_info
from pipeline.jobs.acks import UnsentWrites
from pipeline.jobs.catch_up import CatchUp
from pipeline.jobs.checks import is_retry
from pipeline.jobs.current import set_current_message_id
from pipeline.jobs.finished import ReceivedStates
from pipeline.jobs.options import (
    BROKER_PRIORITY_OPTION,
    ETA_OPTION,
    REDELIVERIES_OPTION,
    RETRIES_OPTION,
    RETRY_DUE_OPTION,
)
from pipeline.jobs.starts import DelayedStarts
from pipeline.states import JobState, state_named
from pipeline.store.connection import BRIEF_WAIT
from pipeline.store.records import RecordStore
from pipeline.store.revocations import RevocationWatcher
from pipeline.store.writer import Answer, When
from pipeline.timestamps import iso_from_millis, now_iso

logger = logging.getLogger(__name__)

#: The error of a job a middleware failed before it ran (an age limit, say): it is dead-lettered.
FAILED_BEFORE_RUN: JobError = {
    "type": "pipeline.errors.PermanentError",
    "message": "failed by a middleware before it ran (for example, past its age limit); dead-lettered",
}

#: Why an attempt in a job's history never ended: RabbitMQ delivered its message again.
CUT_OFF_WHY = "cut off: its worker died or lost RabbitMQ before the attempt ended"


class JobRecords(Middleware):
    """Writes each message's job record through its life.

    ``QUEUED`` once RabbitMQ has taken the message (written by the sender; ``SCHEDULED``, with
    its ``eta``, for a delayed message, then ``QUEUED`` when it is published), ``STARTED`` with
    the attempt number, ``RETRY`` with the error and when the next attempt is due, then
    ``SUCCESS`` with the return value or ``FAILURE`` with the error, also when a middleware
    skipped or dead-lettered the message; ``INTERRUPTED`` (with ``interrupted_at`` and why) when
    the worker's shutdown stopped the job. A message whose record is already finished (revoked
    before it ran, or redelivered after it succeeded) is skipped. ``attempt`` counts every run
    that began: a redelivery after a worker died in a job is one more, and the record notes the
    attempt that was cut off.

    Parameters:
      store: Where the records go.
      received: The states the consumer asked for its deliveries (see
        :class:`~pipeline.jobs.finished.FinishedCheck`); a new, empty one when omitted.
      unsent: Where a final write left to another thread's batch is noted, for the consumer's
        ack to wait for (see :class:`~pipeline.jobs.acks.AcksTogether`).
    """

    def __init__(
        self, store: RecordStore, received: ReceivedStates | None = None, unsent: UnsentWrites | None = None
    ) -> None:
        self.store = store
        self.received = received if received is not None else ReceivedStates(store)
        self.unsent = unsent if unsent is not None else UnsentWrites()
        self.watcher = RevocationWatcher(store.redis)
        self.starts = DelayedStarts(store)
        self.catch_up = CatchUp(store)
        # The attempt and start time of each running job, from before it runs to its end.
        self._started: dict[str, tuple[int, str]] = {}
        # The QUEUED write of each message being sent, from before its publish to after it.
        self._queued: dict[str, Answer[Any]] = {}
        # Failed messages whose FAILURE this process wrote, until their nack: a nack of any
        # other message (dead-lettered by a middleware) writes one itself.
        self._failed_here: set[str] = set()
        self._failed_lock = threading.Lock()

    @staticmethod
    def _describe(message: dramatiq.Message[Any] | MessageProxy) -> dict[str, Any]:
        """The fields that say what a job is. Both the sender and the worker write them, since
        a fast worker's ``STARTED`` can land before the sender's ``QUEUED``, which then yields,
        and a sender that could not reach Redis leaves the record to the worker.
        """
        fields = {
            "message_id": message.message_id,
            "actor": message.actor_name,
            "queue": q_name(message.queue_name),
            "priority": message.options.get(BROKER_PRIORITY_OPTION, 0),
            "enqueued_at": iso_from_millis(message.message_timestamp),
        }
        if ETA_OPTION in message.options and not is_retry(message):
            fields["eta"] = iso_from_millis(message.options[ETA_OPTION])
        return fields

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """With publisher confirms, send a new message's ``QUEUED`` record ahead (on a connection
        the store's writer keeps; with none free, its thread sends it), its answer read in
        ``after_enqueue`` once RabbitMQ has confirmed: the record costs no waiting of its own. A
        retry's record is written by the worker that retries it.
        """
        if is_retry(message):
            return
        if self.store.settings.confirm_delivery:
            fields = self._describe(message)
            # Sent now, without waiting for the answer, which comes while this thread waits for
            # RabbitMQ's confirm.
            self._queued[message.message_id] = self.store.begin_write(
                message.message_id, _sent_state(delay), when=When.AHEAD, **fields
            )

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Read the answer to the ``QUEUED`` write, waiting a moment at most: RabbitMQ has the
        message, so a Redis that is away or slow only costs the record, which the worker writes.

        Without publisher confirms, sending is fire-and-forget and so is the record: the
        ``QUEUED`` write is made now, after the publish (the message is on its way sooner), sent
        to Redis together with the process's other waiting writes, and a write Redis did not
        take is logged once its answer is in.
        """
        if is_retry(message):
            return
        if not self.store.settings.confirm_delivery:
            self._write_queued_soon(message, _sent_state(delay))
            return
        self._read_queued(message)

    def _read_queued(self, message: dramatiq.Message[Any]) -> None:
        """Read the answer to ``message``'s ``QUEUED`` write, if one was sent; log a refusal."""
        pending = self._queued.pop(message.message_id, None)
        if pending is not None:
            try:
                self.store.answer(pending, wait=BRIEF_WAIT)
            except ResultBackendUnavailable as exc:
                _unwritten(message)(exc)

    def after_enqueue_outcome_unknown(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        """The connection broke while ``message`` was published: RabbitMQ may have it, so its
        record reads ``QUEUED`` (without publisher confirms, it was not written yet).
        """
        self._read_queued(message)
        if not self.store.settings.confirm_delivery and not is_retry(message):
            self._write_queued_soon(message)

    def _write_queued_soon(self, message: dramatiq.Message[Any], state: JobState = JobState.QUEUED) -> None:
        """Hand an unconfirmed send's ``QUEUED`` (or ``SCHEDULED``) write to the writer, its
        answer not awaited.
        """
        self.store.begin_write(
            message.message_id, state, on_lost=_unwritten(message), when=When.LATER, **self._describe(message)
        )

    def after_enqueue_failure(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        """RabbitMQ did not take the message: take back its ``QUEUED`` record."""
        pending = self._queued.pop(message.message_id, None)
        if pending is not None:
            # Answered first, so that the read below comes after the write.
            with contextlib.suppress(ResultBackendUnavailable):
                self.store.answer(pending, wait=BRIEF_WAIT)
        try:
            # A moment each, as for the record's write: the caller hears of the failure now.
            state = self.store.state(message.message_id, timeout=BRIEF_WAIT)
            if state in (JobState.QUEUED, JobState.SCHEDULED):
                self.store.delete(message.message_id, timeout=BRIEF_WAIT)
        except ResultBackendUnavailable as exc:
            logger.warning("Job %s was not sent; its QUEUED record may stay: %s", message.message_id, exc)

    def before_enqueue_batch(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Send a batch's ``QUEUED`` records ahead, together, on the writer's thread: Redis
        writes them while the batch is published, and their answers are read once RabbitMQ
        committed it (``after_enqueue_batch``), or the records taken back when it did not.
        """
        futures = self.store.begin_queued(self._describe(m) for m in messages)
        self._queued.update(zip((m.message_id for m in messages), futures, strict=True))

    def _pending(
        self, messages: Sequence[dramatiq.Message[Any]]
    ) -> list[tuple[dramatiq.Message[Any], Answer[tuple[bool, JobState]]]]:
        """The messages whose writes were sent ahead, each with its write's future, taken from
        those waiting for their answers.
        """
        found = ((m, self._queued.pop(m.message_id, None)) for m in messages)
        return [(message, future) for message, future in found if future is not None]

    def after_enqueue_batch(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Read the answers to a committed batch's ``QUEUED`` writes, waiting a moment at most
        in all: RabbitMQ has the messages, so a Redis that is away or slow only costs the
        records, which the workers write.
        """
        try:
            self.store.answer_all((future for _, future in self._pending(messages)), BRIEF_WAIT)
        except ResultBackendUnavailable as exc:
            logger.warning("%d jobs were sent; their QUEUED records were not written: %s", len(messages), exc)

    def after_enqueue_batch_outcome_unknown(
        self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]
    ) -> None:
        """RabbitMQ may yet take the batch (its commit went unanswered): its records stay."""
        self.after_enqueue_batch(broker, messages)

    def after_enqueue_batch_failure(self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """RabbitMQ did not take the batch: take back the ``QUEUED`` records sent ahead of it, a
        moment at most for their answers and one more for the reads; a Redis that fails stops
        the removals.
        """
        pending = self._pending(messages)
        if not pending:
            return
        with contextlib.suppress(ResultBackendUnavailable):
            # Answered first, so that the reads below come after the writes.
            self.store.answer_all((future for _, future in pending), BRIEF_WAIT)
        try:
            states = [(message, self.store.state_soon(message.message_id)) for message, _ in pending]
            deadline = time.monotonic() + BRIEF_WAIT
            for message, state in states:
                left = max(0.0, deadline - time.monotonic())
                if self.store.answer(state, left) in (JobState.QUEUED, JobState.SCHEDULED):
                    self.store.delete(message.message_id, timeout=BRIEF_WAIT)
        except ResultBackendUnavailable as exc:
            logger.warning("%d jobs were not sent; their QUEUED records may stay: %s", len(pending), exc)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Start watching revocations, so that checking one costs no Redis read, the thread
        that writes the starts of jobs that run longer than a moment, and the one that makes
        the writes Redis did not take once it is back.
        """
        self.watcher.start()
        if self.starts.delay > 0:
            self.starts.start()
        self.catch_up.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Stop watching revocations; write the starts still pending."""
        self.watcher.stop()
        self.starts.stop()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Make the kept writes one last time, and say how many are lost if Redis is still away."""
        self.catch_up.stop()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Record ``STARTED``, or skip the message when it was revoked or already finished.

        A first delivery's record is checked in memory (the revocation watcher) and its
        ``STARTED`` write is left to :class:`~pipeline.jobs.starts.DelayedStarts`, or sent without
        waiting when starts are written at once. A redelivery (a worker died holding it, perhaps
        after it finished) and any message while the watcher is down read the record first.
        """
        if not is_job_id(message.message_id):
            # No record can be kept under an id of another form: dead-letter it, with the reason logged.
            logger.warning(
                "Message %r (%s) has no job id of pipeline's form; dead-lettered without running.",
                message.message_id,
                message.actor_name,
            )
            message.fail()
            raise SkipMessage("not a job id")
        redelivered = getattr(message, "redelivered", True)
        fields: dict[str, Any] = {"started_at": now_iso(), **self._describe(message)}
        if redelivered or not self.watcher.running:
            self._look_before_running(message, redelivered, fields)
        elif message.message_id in self.watcher:
            raise SkipMessage(f"job {message.message_id} was revoked")
        else:
            self._skip_if_finished(message)
        attempt = attempt_of(message)
        self._started[message.message_id] = (attempt, fields["started_at"])
        set_current_message_id(message.message_id)
        if self.starts.running:
            self.starts.add(message.message_id, attempt, fields)
        else:
            self.store.begin_write(message.message_id, JobState.STARTED, attempt=attempt, keep=True, **fields)

    def _skip_if_finished(self, message: MessageProxy) -> None:
        """Skip a first delivery whose job already finished: another service published the
        message again, with the id of a job that ran. The skip is logged and counted.
        """
        state = self.received.take(message.message_id)
        if state is None:
            # Not received through the checking consumer: ask now.
            try:
                state = self.store.state(message.message_id)
            except ResultBackendUnavailable as exc:
                logger.warning("Job %s runs without its record read: %s", message.message_id, exc)
                return
        if state.ready:
            skipped = self.store.count_duplicate()
            logger.warning(
                "Job %s (%s) is already %s: a message published again is not run again (%d so far).",
                message.message_id,
                message.actor_name,
                state,
                skipped,
            )
            raise SkipMessage(f"job {message.message_id} is already {state}")

    def _look_before_running(self, message: MessageProxy, redelivered: bool, fields: dict[str, Any]) -> None:
        """Read the record of a message that may have run before: skip it if it is finished, and
        count a redelivery as one more attempt (noting the attempt that was cut off).
        """
        try:
            record = self.store.read(message.message_id)
        except ResultBackendUnavailable as exc:
            logger.warning("Job %s runs without its record read: %s", message.message_id, exc)
            return
        if record is not None and state_named(record.get("state")).ready:
            raise SkipMessage(f"job {message.message_id} is already {record['state']}")
        if not redelivered:
            return
        retries = message.options.get(RETRIES_OPTION, 0)
        earlier = record.get("attempt", 0) if record is not None else 0
        # RabbitMQ delivered this message before. When the record shows that this attempt began
        # (a worker died in it, or a shutdown interrupted it) this delivery is the next one; a
        # message handed back before it started (a worker shutting down) is still this attempt.
        if earlier >= attempt_of(message):
            message.options[REDELIVERIES_OPTION] = earlier - retries
        if record is not None and record["state"] == JobState.STARTED.value:
            fields["cut_off"] = {"attempt": earlier, "started_at": record.get("started_at"), "noticed_at": now_iso()}
            # The history keeps every attempt that did not succeed: this one never ended, so it
            # is kept as it was last seen, STARTED.
            started_at = str(record.get("started_at") or "")
            self._note_attempt(message, earlier, started_at, JobState.STARTED, None, CUT_OFF_WHY)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Record ``SUCCESS``, ``RETRY`` or ``FAILURE`` from the outcome and the retry decision."""
        set_current_message_id(None)
        started = self._started.pop(message.message_id, None)
        attempt, started_at = started if started is not None else (0, now_iso())
        # Noted on the message by the broker when the retries middleware sent it again.
        retry_due = message.options.pop(RETRY_DUE_OPTION, None)
        # A start not written yet goes with the final write: one write for a quick job.
        _, start_fields = self.starts.take(message.message_id)
        if isinstance(exception, JobInterrupted):
            self._write(message, JobState.INTERRUPTED, attempt, **interrupted_fields(str(exception)), **start_fields)
            self._note_attempt(message, attempt, started_at, JobState.INTERRUPTED, None, str(exception))
            return
        if isinstance(exception, JobStopped):
            return
        # Every last write says when the attempt started, whichever write of the start lands first.
        fields = {**start_fields, "started_at": started_at, "finished_at": now_iso()}
        if exception is None and not message.failed:
            if attempt > 1:
                # The previous attempt's error and retry time no longer describe the job.
                fields.update(error=None, next_attempt_at=None)
            try:
                self._write(message, JobState.SUCCESS, attempt, result=result, **fields)
            # A value JSON has no form for, a list that holds itself or an integer past Python's
            # conversion limit, or one nested deeper than the encoder goes.
            except (TypeError, ValueError, RecursionError) as exc:
                message.fail()
                reason = f"the result is not JSON-safe: {exc}"
                not_json: JobError = {"type": type(exc).__name__, "message": reason}
                self._fail(message, attempt, error=not_json, **fields)
            return
        error = error_info(exception) if exception is not None else FAILED_BEFORE_RUN
        if message.failed:
            self._fail(message, attempt, error=error, **fields)
            self._note_attempt(message, attempt, started_at, JobState.FAILURE, error)
        else:
            fields.pop("finished_at")
            due = iso_from_millis(retry_due) if retry_due else None
            self._write(message, JobState.RETRY, attempt, error=error, next_attempt_at=due, **fields)
            self._note_attempt(message, attempt, started_at, JobState.RETRY, error)

    def _note_attempt(
        self,
        message: MessageProxy,
        attempt: int,
        started_at: str,
        state: JobState,
        error: JobError | None,
        why: str | None = None,
    ) -> None:
        """Keep an attempt that did not succeed in the job's history (the record holds only the
        last error): its number, start, end, how it ended and its error without the traceback.
        """
        entry: dict[str, Any] = {"attempt": attempt, "started_at": started_at, "ended_at": now_iso(), "state": state}
        if error is not None:
            entry["error"] = {"type": error.get("type"), "message": error.get("message")}
        if why is not None:
            entry["why"] = why
        self.store.note_attempt(message.message_id, entry)

    def _fail(self, message: MessageProxy, attempt: int, **fields: Any) -> None:
        """Write ``FAILURE`` for a message this worker fails, so that its nack writes nothing more."""
        with self._failed_lock:
            self._failed_here.add(message.message_id)
        self._write(message, JobState.FAILURE, attempt, **fields)

    def _write(self, message: MessageProxy, state: JobState, attempt: int, **fields: Any) -> None:
        # This thread sends the write and reads its answer, unless another thread is sending:
        # that one takes it with its next batch, and the message's ack waits until it has left
        # (this thread does not), so a worker killed in between leaves the message unacked.
        written = self.store.begin_write(message.message_id, state, attempt=attempt, keep=True, **fields)
        if not written.sent:
            self.unsent.note(message.message_id, written)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Record ``FAILURE`` for a message a middleware failed and skipped (it is dead-lettered)."""
        set_current_message_id(None)
        self.received.forget(message.message_id)
        self._started.pop(message.message_id, None)
        self.starts.take(message.message_id)
        if message.failed and is_job_id(message.message_id):
            self._fail(
                message,
                attempt_of(message),
                error=FAILED_BEFORE_RUN,
                finished_at=now_iso(),
                **self._describe(message),
            )

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """A dead-lettered message's record ends ``FAILURE`` (a no-op when it already has)."""
        with self._failed_lock:
            if message.message_id in self._failed_here:
                self._failed_here.discard(message.message_id)
                return
        if is_job_id(message.message_id):
            # A job that failed while it ran had its FAILURE written with its error above; what
            # is nacked here failed before it ran: its actor is unknown here (Dramatiq's
            # consumer fails such a message at once), or a middleware failed it.
            error = FAILED_BEFORE_RUN
            if message.actor_name not in broker.get_declared_actors():
                unknown = ActorNotFound(
                    f"actor {message.actor_name!r} is declared by no module this worker imports; dead-lettered"
                )
                error = error_info(unknown)
            self._write(message, JobState.FAILURE, attempt_of(message), error=error, finished_at=now_iso())

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: object) -> None:
        """Wait for the answers the process's writes still wait for."""
        self.store.flush()


def _unwritten(message: dramatiq.Message[Any]) -> Callable[[ResultBackendUnavailable], None]:
    """What logs, in one line, that ``message`` was sent without its ``QUEUED`` record."""

    def log(exc: ResultBackendUnavailable) -> None:
        logger.warning(
            "Job %s (%s) was sent; its QUEUED record was not written: %s", message.message_id, message.actor_name, exc
        )

    return log


def _sent_state(delay: int | None) -> JobState:
    """The state a newly sent message's record starts in: ``SCHEDULED`` when it has a delay."""
    return JobState.QUEUED if delay is None else JobState.SCHEDULED


def interrupted_fields(reason: str) -> dict[str, Any]:
    """The fields of an ``INTERRUPTED`` record: when and why its attempt was cut short."""
    return {"interrupted_at": now_iso(), "interrupted": reason}


def attempt_of(message: MessageProxy | dramatiq.Message[Any]) -> int:
    """The attempt a delivery of ``message`` is: its retries and redeliveries, plus one."""
    return int(message.options.get(RETRIES_OPTION, 0)) + 1 + int(message.options.get(REDELIVERIES_OPTION, 0))

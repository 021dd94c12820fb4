"""Deploy-safe workers: a worker told to stop (SIGTERM) or to go quiet loses and doubles nothing.

Going quiet, a worker cancels its consumers (what pika holds undelivered goes back to RabbitMQ
at once) and hands back every message it prefetched but did not start: it publishes a copy, the
same message with the same id and options, then acknowledges the delivery. No attempt is counted
against it (a copy is not a redelivery), and on a quorum queue it spends none of the delivery
limit. It keeps running its jobs, and its heartbeat says it is quiet. ``pipeline workers quiet``
asks for it through Redis, for a blue-green deploy; SIGTERM does it first thing.

On SIGTERM, after going quiet, the worker gives its running jobs ``PIPELINE_SHUTDOWN_GRACE``
seconds. A few seconds before the end it asks them to stop: a job that checks (the export
between batches, any actor calling :func:`~pipeline.results.stop_if_revoked`) raises
:class:`~pipeline.errors.JobInterrupted`, its record reads ``INTERRUPTED`` and a copy of its
message goes back with the next attempt's number. At the end, the jobs still running are
recorded ``INTERRUPTED`` and the process exits: RabbitMQ gives their unacknowledged messages to
another worker, whose run is the next attempt. No retry is spent on any of them.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import dramatiq
import pika.exceptions
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware, SkipMessage

from pipeline.background import Background
from pipeline.errors import JobInterrupted, PipelineError
from pipeline.jobs.consumers import WrappedConsumer
from pipeline.jobs.current import request_stop
from pipeline.jobs.options import REDELIVERIES_OPTION, RETRIES_OPTION
from pipeline.jobs.recording import attempt_of, interrupted_fields
from pipeline.settings import Settings
from pipeline.states import JobState
from pipeline.store.connection import BRIEF_WAIT
from pipeline.store.records import RecordStore
from pipeline.store.workers import BEAT_EVERY, WorkerEntry, WorkerRegistry, this_worker_id
from pipeline.store.writer import When

logger = logging.getLogger(__name__)

#: Seconds before the end of the grace at which running jobs are asked to stop (at most a fifth
#: of the grace).
ASK_BEFORE_END = 5.0


class Quiet:
    """Whether a worker has stopped taking deliveries: shared by its consumers and its shutdown."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Take no more deliveries, for the rest of the process's life."""
        self._event.set()

    def is_set(self) -> bool:
        """True once the worker takes no more deliveries."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait ``timeout`` seconds at most for the worker to go quiet; whether it did."""
        return self._event.wait(timeout)


class QuietConsumer(WrappedConsumer):
    """A consumer that, once its worker is quiet, cancels its subscription and hands out only
    what it already holds, while its connection keeps sending the acks of the running jobs.

    Parameters:
      inner: The queue's consumer.
      quiet: The worker's state.
      timeout: Milliseconds a call waits when there is nothing to hand out.
    """

    def __init__(self, inner: Any, quiet: Quiet, timeout: int) -> None:
        super().__init__(inner)
        self.quiet = quiet
        self.timeout = timeout / 1000
        self._cancelled = False

    def __next__(self) -> Any:
        """The next delivery; once quiet, only those already received (else None)."""
        if not self.quiet.is_set():
            return next(self.inner)
        pop_ready = getattr(self.inner, "pop_ready", None)
        held = pop_ready() if pop_ready is not None else None
        if held is not None:
            return held
        try:
            if not self._cancelled:
                self._cancelled = True
                # pika's public cancel: what it holds undelivered is rejected back to the queue.
                self.inner.channel.cancel()
            # The acks the worker threads hand to this connection's thread go out here.
            self.inner.connection.process_data_events(time_limit=self.timeout)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise ConnectionClosed(exc) from None
        return None


class GracefulShutdown(Middleware):
    """Makes a worker go quiet when asked, and stop within its grace without losing a job.

    Parameters:
      settings: Give ``PIPELINE_SHUTDOWN_GRACE``.
      quiet: Shared with the broker's consumers.
      store: The job records (and, through its Redis, the workers' heartbeats).
    """

    def __init__(self, settings: Settings, quiet: Quiet, store: RecordStore) -> None:
        self.settings = settings
        self.quiet = quiet
        self.store = store
        self.registry = WorkerRegistry(store.redis)
        # The jobs running here, by id (a dict's single operations need no lock under the GIL).
        self._running: dict[str, MessageProxy] = {}
        self._worker: Any = None
        self._broker: Any = None
        self._quiet_since = 0.0
        self._quiet_why = ""
        self._entry: WorkerEntry | None = None
        self._beat = Background("pipeline-heartbeat", self._beat_loop)
        self._hand_back = Background("pipeline-hand-back", self._hand_back_once_quiet)

    # -- start-up -------------------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Go quiet on SIGTERM before Dramatiq's own handler runs, and start the heartbeat."""
        self._worker, self._broker = worker, broker
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum: int, frame: Any) -> None:
                self.go_quiet("SIGTERM")
                if callable(previous):
                    previous(signum, frame)

            signal.signal(signal.SIGTERM, on_sigterm)
        host, _, pid = this_worker_id().rpartition(":")
        self._entry = WorkerEntry(
            id=this_worker_id(),
            host=host,
            pid=int(pid),
            queues=sorted({q_name(name) for name in worker.consumers}),
            threads=worker.worker_threads,
            in_flight=0,
            started_at=time.time(),
            beat_at=time.time(),
        )
        self._beat.start()
        self._hand_back.start()

    def _beat_loop(self, stop: threading.Event) -> None:
        while True:
            entry = self._entry
            if entry is not None:
                entry.in_flight = len(self._running)
                entry.quiet = self.quiet.is_set()
                try:
                    if self.registry.beat(entry) and not self.quiet.is_set():
                        self.go_quiet("pipeline workers quiet")
                except PipelineError as exc:
                    logger.debug("Heartbeat not written: %s", exc)
            if stop.wait(BEAT_EVERY):
                return

    # -- going quiet -----------------------------------------------------------------------

    def go_quiet(self, why: str) -> None:
        """Take no more deliveries; the hand-back thread then hands back the prefetched ones.

        Nothing here waits: this runs in a signal handler, which under gevent may run on the
        hub, where a wait (a lock taken, a thread started) is an error.
        """
        if self.quiet.is_set():
            return
        self._quiet_since = time.monotonic()
        self._quiet_why = why
        self.quiet.set()

    def _hand_back_once_quiet(self, stop: threading.Event) -> None:
        """Wait for the worker to go quiet, then say so and hand back what it holds."""
        while not self.quiet.wait(BEAT_EVERY):
            if stop.is_set():
                return
        logger.info("Worker goes quiet (%s): it takes no more jobs and hands back those it holds", self._quiet_why)
        self._hand_back_waiting()

    def _hand_back_waiting(self) -> None:
        """Hand back what waits in the worker's queue for a free thread."""
        worker = self._worker
        if worker is None:
            return
        taken = []
        while True:
            try:
                taken.append(worker.work_queue.get_nowait())
            except queue.Empty:
                break
        messages = [item.message for item in taken]
        try:
            handed = self._republish(messages)
            for message in handed:
                worker.consumers[message.queue_name].post_process_message(message)
            if messages:
                logger.info("Handed back %d messages this worker had not started", len(handed))
        finally:
            for _ in taken:
                worker.work_queue.task_done()

    def _republish(self, messages: list[Any], options: dict[str, Any] | None = None) -> list[Any]:
        """Publish a copy of each message (same id and options, with ``options`` over them); the
        ones RabbitMQ took. A queue whose publish fails keeps its deliveries unacknowledged, for
        RabbitMQ to give back when the worker's connection closes.
        """
        by_queue: dict[str, list[Any]] = defaultdict(list)
        for message in messages:
            by_queue[message.queue_name].append(message)
        handed = []
        for queue_name, originals in by_queue.items():
            copies = [original.copy() for original in originals]
            for copy in copies:
                copy.options.update(options or {})
            try:
                self._broker.enqueue_many(copies)
            except PipelineError as exc:
                logger.warning(
                    "%d messages of %s stay with this worker until it exits: %s", len(copies), queue_name, exc
                )
                continue
            handed.extend(originals)
        return handed

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Hand back a message a thread takes once the worker is quiet; note the others as running."""
        if self.quiet.is_set() and self._republish([message]):
            raise SkipMessage(f"handed back: the worker is quiet ({message.message_id})")
        self._running[message.message_id] = message

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Send an interrupted job's message back for its next attempt."""
        if isinstance(exception, JobInterrupted):
            # The copy is the next attempt: one more than this one, with no retry spent.
            redeliveries = attempt_of(message) - int(message.options.get(RETRIES_OPTION, 0))
            if not self._republish([message], {REDELIVERIES_OPTION: redeliveries}):
                # Not acknowledged while this thread waits here: RabbitMQ gives the message
                # back once the process exits at the end of the grace.
                threading.Event().wait()
        self._running.pop(message.message_id, None)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """A skipped message is not running."""
        self._running.pop(message.message_id, None)

    # -- stopping --------------------------------------------------------------------------

    def _wait_for_jobs(self, until: float) -> bool:
        """Wait until no job runs or ``until`` (monotonic); True when none runs."""
        while self._running and time.monotonic() < until:
            time.sleep(0.05)
        return not self._running

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Give the running jobs the grace, ask them to stop near its end, and at its end
        record what still runs as ``INTERRUPTED`` and exit, leaving it to RabbitMQ.
        """
        self.go_quiet("stopping")
        grace = float(self.settings.shutdown_grace)
        end = self._quiet_since + grace
        if self._wait_for_jobs(end - min(ASK_BEFORE_END, grace / 5)):
            return self._leave()
        logger.info("Asking %d running jobs to stop: the shutdown grace ends soon", len(self._running))
        request_stop()
        if self._wait_for_jobs(end):
            return self._leave()
        cut = list(self._running.values())
        for message in cut:
            fields = interrupted_fields(f"still running when the worker's {grace:g} s shutdown grace ended")
            # Sent by the writer's thread: this one waits no longer than the flush below, even
            # on a Redis that does not answer.
            attempt = attempt_of(message)
            self.store.begin_write(message.message_id, JobState.INTERRUPTED, attempt=attempt, when=When.SOON, **fields)
        self.store.flush(timeout=BRIEF_WAIT)
        logger.warning(
            "Shutdown grace over: %d jobs still running are handed back to RabbitMQ (%s)",
            len(cut),
            ", ".join(m.message_id for m in cut),
        )
        self._leave()
        logging.shutdown()
        os._exit(0)

    def _leave(self) -> None:
        self._beat.stop(wait=BRIEF_WAIT)
        try:
            self.registry.leave(this_worker_id())
        except PipelineError as exc:
            logger.debug("Heartbeat entry not removed: %s", exc)

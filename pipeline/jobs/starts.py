"""Delayed ``STARTED`` writes: a job's start is recorded once it has run for a moment.

Most jobs take milliseconds; writing ``STARTED`` for each costs a Redis round trip that no
reader can ever see, since ``SUCCESS`` follows at once. So a first delivery's start is kept
in memory, and a background thread writes ``STARTED`` for every job still running after
``PIPELINE_STARTED_AFTER`` milliseconds; a job that ends sooner has its start (time and
attempt) written with its final state in one write. (Celery, by default, never records a
start at all.)

The thread wakes when the oldest start it keeps comes due. While starts keep being noted, it
also looks once a delay with none kept, so that a worker running one short job at a time does
not wake it for each; a delay with none noted, and it sleeps until the next: an idle worker
spends no CPU on it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pipeline.background import Background
from pipeline.states import JobState
from pipeline.store.records import RecordStore
from pipeline.store.writer import When

#: Seconds a stopping worker waits for the thread.
STOP_WAIT = 5.0


class DelayedStarts:
    """The starts of running jobs not yet written, and the thread that writes them when due.

    Parameters:
      store: Where records are written; its settings give the delay (``PIPELINE_STARTED_AFTER``).
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._pending: dict[str, tuple[float, int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        # Set to have the thread look again: a start noted while it kept none, or a stop.
        self._wake = threading.Event()
        # Whether the thread kept no start when it last looked, and waits for one.
        self._idle = False
        # Whether a start was noted since the thread last looked.
        self._noted = False
        self._background = Background("pipeline-starts", self._run, wake=self._wake.set)

    @property
    def delay(self) -> float:
        """Seconds a job runs before its ``STARTED`` is written."""
        return float(self.store.settings.started_after) / 1000

    @property
    def running(self) -> bool:
        """True while the writing thread runs; without it starts must be written at once."""
        return self._background.running

    def start(self) -> None:
        """Start the thread that writes due starts."""
        self._background.start()

    def stop(self) -> None:
        """Stop the thread, writing the starts of jobs still running."""
        self._background.stop(STOP_WAIT)
        self.write_due(everything=True)

    def add(self, message_id: str, attempt: int, fields: dict[str, Any]) -> None:
        """Note that attempt ``attempt`` of ``message_id`` started, with its ``STARTED`` fields."""
        with self._lock:
            self._pending[message_id] = (time.monotonic(), attempt, fields)
            self._noted = True
            idle, self._idle = self._idle, False
        if idle:
            self._wake.set()

    def take(self, message_id: str) -> tuple[int, dict[str, Any]]:
        """The attempt and start fields of a job ending now whose start was not written yet.

        Returns:
          ``(0, {})`` when the start was written already (or never noted).
        """
        with self._lock:
            entry = self._pending.pop(message_id, None)
        return (0, {}) if entry is None else (entry[1], entry[2])

    def write_due(self, everything: bool = False) -> None:
        """Write ``STARTED`` for every job running longer than the delay (or every job)."""
        limit = time.monotonic() - self.delay
        with self._lock:
            due = [key for key, (noted, _, _) in self._pending.items() if everything or noted <= limit]
            entries = [(key, self._pending.pop(key)) for key in due]
        for message_id, (_, attempt, fields) in entries:
            # Sent by the writer's thread, all that came due in one round trip (this thread
            # waits for none of them); kept and written later if Redis does not take it now.
            self.store.begin_write(message_id, JobState.STARTED, attempt=attempt, keep=True, when=When.SOON, **fields)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.write_due()
            with self._lock:
                # Cleared under the lock add() takes: a start noted after this look found none
                # sets it again, and the wait below ends at once; one noted beside older starts
                # is due after them, and waits with them.
                self._wake.clear()
                oldest = min((noted for noted, _, _ in self._pending.values()), default=None)
                # None kept, but some noted since the last look: more are likely to come, and
                # looking again in a delay costs less than being woken for each of them.
                busy, self._noted = self._noted, False
                idle = self._idle = oldest is None and not busy
            if stop.is_set():
                return
            if oldest is None:
                self._wake.wait(None if idle else self.delay)
            else:
                self._wake.wait(max(0.0, oldest + self.delay - time.monotonic()))

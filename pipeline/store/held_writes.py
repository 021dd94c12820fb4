"""The thread that sends the record writes a process holds back, a moment after they were made.

An unconfirmed send is fire-and-forget, and so is its ``QUEUED`` record: the thread holds the
write back and sends it with the next ones, one send to Redis for many writes (see
:meth:`~pipeline.store.records.RecordStore.write_soon`). A thread that sends nothing more for a
while still has its writes made: this thread sends them once they are :data:`HOLD_AT_MOST`
seconds old. It sleeps while no write is held.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Seconds a write may be held back at most before it is sent.
HOLD_AT_MOST = 0.01


class HeldWritesSender:
    """Calls ``send_held(older_than)`` while writes are held, every ``hold`` seconds.

    Parameters:
      send_held: Sends the writes held ``older_than`` seconds or more; returns whether writes
        are still held.
      hold: Seconds a write may be held at most.
    """

    def __init__(self, send_held: Callable[[float], bool], hold: float) -> None:
        self._send_held = send_held
        self._hold = hold
        self._held = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()

    def wake(self) -> None:
        """A thread holds a write: see that it is sent within ``hold`` seconds."""
        if self._pid != os.getpid():
            self._start()
        self._held.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            # A forked child has none of its parent's threads: it starts its own.
            self._held = threading.Event()
            self._thread = threading.Thread(target=self._run, name="pipeline-held-writes", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            self._held.wait()
            self._held.clear()
            # Whatever was held before the clear is sent by the loop below, which runs until no
            # thread holds a write: a wake-up cleared here is never lost.
            holding = True
            while holding:
                time.sleep(self._hold)
                try:
                    holding = self._send_held(self._hold)
                except Exception:
                    logger.exception("Sending held record writes failed; trying again.")

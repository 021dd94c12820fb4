"""The one way pipeline runs a background thread: a daemon started on first use, once per process.

A forked child has none of its parent's threads; :meth:`Background.start` called in the child
starts the child's own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

#: How many forks this process descends from: a thread started under another count is a
#: parent's, which the child does not have. (Counted rather than read from ``os.getpid()``,
#: which is a system call, on every command a worker hands its writer.)
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


class Background:
    """Runs ``loop(stop)`` in a daemon thread until :meth:`stop` sets ``stop``.

    Parameters:
      name: The thread's name, as logs and debuggers show it.
      loop: The work; it returns once the event it is given is set.
      wake: For a loop that waits on something of its own rather than on ``stop``: what ends
        that wait, called once ``stop`` is set.
    """

    def __init__(
        self, name: str, loop: Callable[[threading.Event], None], wake: Callable[[], object] | None = None
    ) -> None:
        self.name = name
        self.loop = loop
        self.wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._forks = -1
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True while the thread runs in this process."""
        thread = self._thread
        return self._forks == _forks and thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread (once per process; a running one is left as it is)."""
        with self._lock:
            if self._thread is not None and self._forks == _forks:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self.loop, args=(self._stop,), name=self.name, daemon=True)
            self._thread.start()
            self._forks = _forks

    def stop(self, wait: float) -> None:
        """Tell the thread to stop and wait for it ``wait`` seconds at most (it is a daemon)."""
        self._stop.set()
        if self.wake is not None:
            self.wake()
        thread, self._thread = self._thread, None
        if thread is not None and self._forks == _forks and thread is not threading.current_thread():
            thread.join(wait)

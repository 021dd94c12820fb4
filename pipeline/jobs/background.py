"""A daemon thread of a worker process: started once, told to stop, waited for a while."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """Runs ``loop(stop)`` in a daemon thread until :meth:`stop` sets ``stop``.

    Parameters:
      name: The thread's name, as logs and debuggers show it.
      loop: The work; it returns once the event it is given is set.
    """

    def __init__(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        self.name = name
        self.loop = loop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; a running one is left as it is)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.loop, args=(self._stop,), name=self.name, daemon=True)
            self._thread.start()

    def stop(self, wait: float) -> None:
        """Tell the thread to stop and wait for it ``wait`` seconds at most (it is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)
        self._thread = None

"""Catching up on record writes a worker kept while Redis was away."""

from __future__ import annotations

import logging
import threading

from pipeline.background import Background
from pipeline.errors import ResultBackendUnavailable
from pipeline.settings import mask_url
from pipeline.store.records import RecordStore

logger = logging.getLogger(__name__)

#: Seconds between two looks for kept writes while Redis answers.
INTERVAL = 0.5
#: Seconds between two tries at most while Redis is away (the wait doubles up to it).
MAX_INTERVAL = 10.0
#: Seconds a stopping worker gives its last try.
STOP_WAIT = 2.0


class CatchUp:
    """A thread that writes the kept record writes once Redis takes writes again.

    Parameters:
      store: The store whose kept writes it makes.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._background = Background("pipeline-catch-up", self._run)

    def start(self) -> None:
        """Start the thread."""
        self._background.start()

    def stop(self) -> None:
        """Stop the thread after a last, brief try; log how many writes are lost if Redis is
        still away (or does not answer in a moment: the worker is stopping).
        """
        self._background.stop(STOP_WAIT)
        if self.store.kept:
            try:
                self.store.catch_up(brief=True)
            except ResultBackendUnavailable as exc:
                logger.error("%d record writes are lost: Redis is still away (%s).", self.store.kept, exc)

    def _run(self, stop: threading.Event) -> None:
        wait = INTERVAL
        url = mask_url(self.store.settings.redis_url)
        while not stop.wait(wait):
            if not self.store.kept:
                continue
            try:
                written = self.store.catch_up()
            except ResultBackendUnavailable as exc:
                if wait == INTERVAL:
                    logger.warning("%d record writes wait for Redis at %s: %s", self.store.kept, url, exc)
                wait = min(wait * 2, MAX_INTERVAL)
                continue
            if written:
                logger.warning("Redis at %s is back: %d kept record writes made.", url, written)
            if self.store.dropped:
                logger.error("%d record writes were dropped while Redis was away (over the bound).", self.store.dropped)
                self.store.dropped = 0
            wait = INTERVAL

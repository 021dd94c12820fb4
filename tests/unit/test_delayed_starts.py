"""The thread that writes the starts of jobs still running after PIPELINE_STARTED_AFTER."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.jobs.starts import DelayedStarts
from pipeline.states import JobState

#: The delay the tests' starts are written after, in milliseconds.
DELAY_MS = 100


class _Store:
    """What DelayedStarts uses of a record store: its settings, and the writes it is handed."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(started_after=DELAY_MS)
        self.written: list[tuple[str, JobState, float]] = []
        self.wrote = threading.Event()

    def begin_write(self, message_id: str, state: JobState, **_: Any) -> None:
        self.written.append((message_id, state, time.monotonic()))
        self.wrote.set()


@pytest.fixture
def starts() -> Iterator[tuple[DelayedStarts, _Store]]:
    store = _Store()
    delayed = DelayedStarts(store)  # type: ignore[arg-type]
    delayed.start()
    yield delayed, store
    delayed.stop()


def _looks(delayed: DelayedStarts, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times the thread looks for due starts from now on."""
    looks: list[float] = []
    write_due = delayed.write_due

    def counted(everything: bool = False) -> None:
        looks.append(time.monotonic())
        write_due(everything)

    monkeypatch.setattr(delayed, "write_due", counted)
    return looks


def test_a_thread_that_keeps_no_start_does_not_wake(starts, monkeypatch):
    delayed, _ = starts
    # Let the thread's first look end, with nothing to keep.
    time.sleep(0.05)
    looks = _looks(delayed, monkeypatch)
    time.sleep(1.0)
    # A thread that looked every half delay would have looked about twenty times.
    assert looks == []


def test_a_start_is_written_once_due_and_a_job_that_ended_before_never(starts, monkeypatch):
    delayed, store = starts
    time.sleep(0.05)
    looks = _looks(delayed, monkeypatch)
    noted = time.monotonic()
    delayed.add("long", 1, {"started_at": "now"})
    delayed.add("short", 1, {"started_at": "now"})
    assert delayed.take("short") == (1, {"started_at": "now"})
    assert store.wrote.wait(5)
    [(message_id, state, written)] = store.written
    assert message_id == "long" and state is JobState.STARTED
    assert written - noted >= DELAY_MS / 1000
    # Woken by the first start, then once it was due; nothing kept since.
    time.sleep(0.3)
    assert len(looks) <= 3 and delayed.take("long") == (0, {})


def test_a_stop_ends_a_waiting_thread_at_once_and_writes_the_starts_kept():
    store = _Store()
    store.settings.started_after = 60_000
    delayed = DelayedStarts(store)  # type: ignore[arg-type]
    delayed.start()
    delayed.add("running", 2, {})
    time.sleep(0.05)
    started = time.monotonic()
    delayed.stop()
    # The thread waited a minute for the start to come due; the stop does not wait for it.
    assert time.monotonic() - started < 1.0 and not delayed.running
    assert [(message_id, state) for message_id, state, _ in store.written] == [("running", JobState.STARTED)]


def test_short_jobs_one_after_another_do_not_wake_the_thread_for_each(starts, monkeypatch):
    delayed, store = starts
    time.sleep(0.05)
    looks = _looks(delayed, monkeypatch)
    # 200 jobs, one at a time, each ending long before its start is due.
    for n in range(200):
        delayed.add(f"job-{n}", 1, {})
        assert delayed.take(f"job-{n}") == (1, {})
        time.sleep(0.0025)
    burst = len(looks)
    # Woken by the first, then about once a delay while they came (half a second or more):
    # a thread woken by every start noted while it kept none would have looked 200 times.
    assert 1 <= burst <= 12
    # A delay with none noted, and it sleeps until the next.
    time.sleep(3 * DELAY_MS / 1000)
    settled = len(looks)
    time.sleep(0.5)
    assert len(looks) == settled and store.written == []

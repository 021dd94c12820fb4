"""Tests marked ``alone`` run with no other test beside them.

The suite runs in several processes at once (pytest-xdist), which load the machine's two
cores. A test that holds timing to account (mails per second seen by the relay, jobs on time
to the second, answers within their bound) measures pipeline only on a machine that is not
also running other tests, so such a test waits until every running test has ended, and no
test starts while it runs. A readers-writer lock across the processes: every test holds the
run's lock shared, a test marked ``alone`` holds it exclusively, and a second lock (the
turnstile) keeps new tests from slipping in while one waits to run alone.

The ``alone`` tests are handed out first, to one process (see :mod:`lanes`), which runs them
one after another and keeps the run to itself from the first to the last; the other processes
wait for them to end before their first test.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest


class _RunLock:
    """This process's handles on the run's two lock files (a lock lives as long as its handle).

    Parameters:
      alone_tests: How many tests of the run are marked ``alone``.
    """

    def __init__(self, alone_tests: int) -> None:
        folder = Path(os.environ[LOCKS_VARIABLE])
        self.lock: IO[str] = open(folder / "run.lock", "a")  # noqa: SIM115
        self.turnstile: IO[str] = open(folder / "turnstile.lock", "a")  # noqa: SIM115
        # One byte for each alone test that ended, in any process.
        self.ended = folder / "alone.ended"
        self.alone_tests = alone_tests
        self.alone = False
        self.started = False

    def _wait_for_the_alone_tests(self) -> None:
        """Before this process's first test: the alone tests run first, and a test that took the
        lock before them would keep them, and every process, waiting until it ends.
        """
        deadline = time.monotonic() + START_WAIT
        while self.alone_tests and time.monotonic() < deadline:
            if self.ended.exists() and self.ended.stat().st_size >= self.alone_tests:
                return
            time.sleep(0.1)

    def enter(self, alone: bool) -> None:
        if self.alone:
            return  # still held from the alone test before
        if not self.started and not alone:
            self._wait_for_the_alone_tests()
        self.started = True
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)
        fcntl.flock(self.lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if alone:
            self.alone = True
        else:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go of the lock files (and any lock held through them)."""
        self.lock.close()
        self.turnstile.close()

    def leave(self, keep_alone: bool) -> None:
        if self.alone:
            with self.ended.open("a") as ended:
                ended.write("x")
        if self.alone and keep_alone:
            return
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        if self.alone:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)
            self.alone = False


_run_lock: _RunLock | None = None
_alone_tests = 0
#: The environment variable naming the folder of the run's lock files.
LOCKS_VARIABLE = "PIPELINE_TEST_LOCKS"
#: Seconds a process waits at most for the alone tests before its first test (should a process
#: hold them behind others, it would wait for itself).
START_WAIT = 240


def is_alone(item: pytest.Item | None) -> bool:
    """Whether ``item`` is a test marked ``alone``."""
    return item is not None and item.get_closest_marker("alone") is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "alone: runs with no other test of the run beside it")
    if not os.environ.get("PYTEST_XDIST_WORKER") and LOCKS_VARIABLE not in os.environ:
        # The run's lock files, in a folder the processes it starts inherit, removed after it.
        folder = tempfile.mkdtemp(prefix="pipeline-tests-")
        os.environ[LOCKS_VARIABLE] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _run_lock
    if _run_lock is not None:
        _run_lock.close()
        _run_lock = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _alone_tests
    _alone_tests = sum(map(is_alone, session.items))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _run_lock
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    if _run_lock is None:
        _run_lock = _RunLock(_alone_tests)
    _run_lock.enter(is_alone(item))
    try:
        yield
    finally:
        _run_lock.leave(keep_alone=is_alone(nextitem))

"""Tests marked ``alone`` run with no other test beside them.

The suite runs in several processes at once (pytest-xdist), which load the machine's two
cores. A test that holds timing to account (mails per second seen by the relay, jobs on time
to the second, answers within their bound) measures pipeline only on a machine that is not
also running other tests, so such a test waits until every running test has ended, and no
test starts while it runs. A readers-writer lock across the processes: every test holds the
run's lock shared, a test marked ``alone`` holds it exclusively, and a second lock (the
turnstile) keeps new tests from slipping in while one waits to run alone.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _lock_files() -> tuple[Path, Path]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "single")
    folder = Path(tempfile.gettempdir())
    return folder / f"pipeline-tests-{run}.lock", folder / f"pipeline-tests-{run}.turnstile"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "alone: runs with no other test of the run beside it")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    alone = item.get_closest_marker("alone") is not None
    lock_path, turnstile_path = _lock_files()
    with open(lock_path, "a") as lock, open(turnstile_path, "a") as turnstile:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)

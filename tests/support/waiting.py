"""Waiting on a condition with a deadline, instead of fixed sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sized
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two looks at the condition.
POLL = 0.02


def wait_until(look: Callable[[], T], timeout: float = 10, what: str = "the condition") -> T:
    """Call ``look`` until it returns something true, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = look()
        if seen:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s (last seen: {seen!r})")
        time.sleep(POLL)


def settled(look: Callable[[], T], quiet: float = 0.3, timeout: float = 10, what: str = "the value") -> T:
    """Wait until ``look()`` returns the same value for ``quiet`` seconds, and return it."""
    deadline = time.monotonic() + timeout
    last, since = look(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} kept changing for {timeout} s (last seen: {last!r})")
        time.sleep(POLL)
        now = look()
        if now != last:
            last, since = now, time.monotonic()
    return last


def wait_for_arrivals(arrived: threading.Condition, items: Sized, count: int, timeout: float) -> None:
    """Block until ``items``, which grow under ``arrived`` (notified on each), hold ``count``
    mails; fail after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    with arrived:
        while len(items) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(items)} mails arrived, expected {count}")
            arrived.wait(left)

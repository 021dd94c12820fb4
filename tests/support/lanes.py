"""The order tests are handed out in, so that the suite's processes end together.

pytest-xdist's ``worksteal`` gives each process a contiguous share of the collected tests (a
third each, with three), run from its head, and later moves the tail of the longest queue to a
process that ran out. A long test that starts late keeps its process busy after the others are
done. So the collected tests are laid out in lanes, one per process and each as long as the
share xdist gives it:

- the tests marked ``alone`` first, in the first lane: they run at the start, while the other
  processes wait before their first test, so no test is cut into and none waits for a long
  one beside it to end (see :mod:`alone`);
- then the long tests, marked ``lasts(seconds)``, longest first, each at the head of the lane
  with the fewest seconds so far; the tests of a module marked as a whole stay together, as
  its fixtures are set up once per process;
- then every other test, in its collected order, filling the lanes up to their lengths.

A run in one process gets the same order: the alone tests, the long ones, the rest.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
from alone import is_alone


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lasts(seconds): the test takes about that long; run it early")


def _seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("lasts")
    return float(marker.args[0]) if marker is not None else 0.0


def _group(item: pytest.Item) -> str:
    """A test marked itself goes alone; a module marked as a whole (its fixtures are set up
    once for all its tests) goes together.
    """
    if any(marker.name == "lasts" for marker in item.own_markers):
        return item.nodeid
    return item.nodeid.split("::")[0]


def _share_sizes(count: int, lanes: int) -> list[int]:
    """How many tests each process gets at first, as ``worksteal`` splits them."""
    sizes = []
    for lane in range(lanes):
        sizes.append(count // (lanes - lane))
        count -= sizes[-1]
    return sizes


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    alone = [item for item in items if is_alone(item)]
    groups: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        if _seconds(item) and not is_alone(item):
            groups[_group(item)].append(item)
    placed = {id(item) for item in alone} | {id(item) for group in groups.values() for item in group}
    rest = [item for item in items if id(item) not in placed]

    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    lanes: list[list[pytest.Item]] = [[] for _ in range(count)]
    lanes[0].extend(alone)
    # The alone tests hold every process, so they count for no lane.
    load = [0.0] * count
    timed = [(sum(map(_seconds, group)), group) for group in groups.values()]
    for seconds, group in sorted(timed, key=lambda timed_group: -timed_group[0]):
        lane = load.index(min(load))
        lanes[lane].extend(group)
        load[lane] += seconds
    for lane, size in zip(lanes, _share_sizes(len(items), count), strict=True):
        take = max(0, size - len(lane))
        lane.extend(rest[:take])
        del rest[:take]
    lanes[-1].extend(rest)
    items[:] = [item for lane in lanes for item in lane]

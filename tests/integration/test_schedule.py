"""The delayed messages kept in Redis: a take leases what it took, and only the take that holds
a message's lease gives it back or forgets it."""

from __future__ import annotations

import uuid

import pytest
from testenv import make_settings

from pipeline.store.connection import RedisConnection
from pipeline.store.schedule import LEASE, Schedule

pytestmark = pytest.mark.integration


@pytest.fixture
def schedule(clean_redis) -> Schedule:
    return Schedule(RedisConnection(make_settings()))


def keep(schedule: Schedule, queue: str, due: int) -> str:
    message_id = str(uuid.uuid4())
    schedule.add(queue, message_id, due, f"body of {message_id}")
    return message_id


def test_a_publish_that_failed_gives_its_messages_back_due_at_their_own_times(schedule):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    ids = [keep(schedule, queue, due) for due in (1_000, 2_000)]
    found = schedule.take_due(queue, now=5_000, most=10)
    assert [t.message_id for t in found.taken] == ids
    assert schedule.take_due(queue, now=5_000, most=10).taken == []  # leased
    assert schedule.release(queue, found, found.taken) == 2
    again = schedule.take_due(queue, now=5_000, most=10)
    assert [(t.message_id, t.due) for t in again.taken] == [(ids[0], 1_000), (ids[1], 2_000)]


def test_a_take_whose_lease_ran_out_neither_gives_back_nor_forgets_what_another_took_since(schedule):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    message_id = keep(schedule, queue, 1_000)
    first = schedule.take_due(queue, now=5_000, most=10)
    # The first taker hangs past its lease; another worker takes the message and publishes it.
    later = 5_000 + int(LEASE * 1000) + 1
    second = schedule.take_due(queue, now=later, most=10)
    assert [t.message_id for t in second.taken] == [message_id]
    assert schedule.release(queue, first, first.taken) == 0
    schedule.forget_taken(queue, first, [message_id])
    # Still the second take's: not due again before its lease ends, and then only once.
    assert schedule.take_due(queue, now=later, most=10).taken == []
    assert schedule.count(queue) == 1
    schedule.forget_taken(queue, second, [message_id])
    assert schedule.count(queue) == 0

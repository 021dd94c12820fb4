"""State reads sent by a consumer and collected by worker threads, on the real Redis and on one
of the test's own that stops."""

from __future__ import annotations

import threading
import uuid

import pytest
from testenv import make_settings

from pipeline.states import JobState
from pipeline.store.connection import RedisConnection
from pipeline.store.keys import Keys
from pipeline.store.records import get_store
from pipeline.store.state_line import StateLine

pytestmark = pytest.mark.integration


def test_answers_are_matched_to_their_reads_whichever_thread_collects_them(clean_redis):
    store = get_store()
    ids = [str(uuid.uuid4()) for _ in range(6)]
    store.write(ids[0], JobState.QUEUED, actor="ping")
    store.write(ids[2], JobState.QUEUED, actor="ping")
    store.write(ids[2], JobState.SUCCESS, result=1)
    clean_redis.set(Keys("pipeline-test").record(ids[4]), "not a hash")  # answers WRONGTYPE
    answers = StateLine(store.redis).ask(ids)
    seen: dict[int, JobState] = {}
    # Collected out of order, from other threads: each gets its own answer.
    threads = [threading.Thread(target=lambda i=i: seen.__setitem__(i, answers[i].state())) for i in (5, 2, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    seen |= {i: answers[i].state() for i in (1, 3, 4)}
    assert [seen[i] for i in range(6)] == [
        JobState.QUEUED, JobState.PENDING, JobState.SUCCESS, JobState.PENDING, JobState.PENDING, JobState.PENDING
    ]  # fmt: skip


def test_a_redis_that_went_away_leaves_answers_unknown_and_a_new_connection_after(private_redis):
    line = StateLine(RedisConnection(make_settings(redis_url=private_redis.url, redis_socket_timeout=1.0)))
    first = line.ask([str(uuid.uuid4())])
    assert first[0].state() is JobState.PENDING
    private_redis.stop()
    assert [answer.state() for answer in line.ask([str(uuid.uuid4()), str(uuid.uuid4())])] == [JobState.PENDING] * 2
    private_redis.start()
    message_id = str(uuid.uuid4())
    private_redis.client().hset(f"pipeline-test:job:{message_id}", "state", '"STARTED"')
    assert line.ask([message_id])[0].state() is JobState.STARTED

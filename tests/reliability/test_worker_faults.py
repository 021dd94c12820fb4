"""Workers killed or stopped mid-job: the job is never lost and its record ends final and true."""

from __future__ import annotations

import uuid

import pytest
import sample_actors
from waiting import wait_until

from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState
from pipeline.store.records import get_store
from pipeline.web.queries import timeline

pytestmark = pytest.mark.integration


def test_a_job_whose_worker_was_killed_is_redelivered_and_counted_as_a_second_attempt(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    first = start_worker([DEFAULT_QUEUE], threads=1)
    result = AsyncResult(sample_actors.steps.send(str(uuid.uuid4()), 30, 0.05).message_id)
    wait_until(lambda: result.state is JobState.STARTED, what="the job started")
    first.kill()
    start_worker([DEFAULT_QUEUE], threads=1)
    assert result.get(timeout=30) == 30
    record = result.info()
    assert record["state"] == "SUCCESS" and record["attempt"] == 2
    assert record["cut_off"]["attempt"] == 1 and record["cut_off"]["started_at"] <= record["started_at"]
    # The job's history keeps the attempt that never ended, as the job page shows it.
    (cut,) = get_store().attempts(result.id)
    assert cut["attempt"] == 1 and cut["state"] == JobState.STARTED and cut["why"].startswith("cut off")
    assert cut["started_at"] == record["cut_off"]["started_at"]
    moments = [what for _, what, _ in timeline(record, [cut])]
    assert moments.count("attempt 1 cut off") == 1 and "attempt 2 started" in moments


def test_a_worker_stopped_mid_job_finishes_it_and_hands_back_the_rest(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    worker = start_worker([DEFAULT_QUEUE], threads=1)
    running = AsyncResult(sample_actors.steps.send(str(uuid.uuid4()), 10, 0.05).message_id)
    waiting = [AsyncResult(sample_actors.ping_later.send(n).message_id) for n in range(3)]
    wait_until(lambda: running.state is JobState.STARTED, what="the job started")
    worker.stop()
    record = running.info()
    assert record["state"] == "SUCCESS" and record["attempt"] == 1 and record["result"] == 10
    # Each waiting job either ran before the worker stopped or went back to RabbitMQ untouched.
    assert {r.state for r in waiting} <= {JobState.SUCCESS, JobState.QUEUED}
    start_worker([DEFAULT_QUEUE], threads=1)
    assert [r.get(timeout=20) for r in waiting] == [0, 1, 2]
    assert all(r.info()["attempt"] == 1 for r in waiting)

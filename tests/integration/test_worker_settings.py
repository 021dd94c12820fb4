"""What the settings promise, through real workers: delayed starts, unconfirmed sends, and
revocations that reach every worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import sample_actors
from services import ROOT
from waiting import settled, wait_until

from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration


def runs(redis_client, key: str) -> int:
    return int(redis_client.get(sample_actors.RUNS_PREFIX + key) or 0)


def states_seen_while_running(result: AsyncResult) -> set[str]:
    seen = set()
    while not result.ready():
        record = result.info()
        if record:
            seen.add(record["state"])
    return seen


def test_a_job_shorter_than_started_after_never_reads_started_but_keeps_its_start(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=1, env={"PIPELINE_STARTED_AFTER": "5000"})
    result = AsyncResult(sample_actors.steps.send(str(uuid.uuid4()), 5, 0.1).message_id)
    assert JobState.STARTED.value not in states_seen_while_running(result)
    record = result.info()
    assert record["state"] == "SUCCESS" and record["attempt"] == 1
    assert record["enqueued_at"] <= record["started_at"] <= record["finished_at"]


def test_a_job_longer_than_started_after_reads_started_while_it_runs(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=1, env={"PIPELINE_STARTED_AFTER": "100"})
    result = AsyncResult(sample_actors.steps.send(str(uuid.uuid4()), 10, 0.1).message_id)
    assert JobState.STARTED.value in states_seen_while_running(result)
    assert result.get(timeout=10) == 10


def test_unconfirmed_sends_write_the_record_an_instant_later_and_run(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    script = (
        "from pipeline.actors import ping\n"
        "from pipeline.broker import broker\n"
        "from pipeline.results import AsyncResult\n"
        "assert broker.confirm_delivery is False\n"
        "import time\n"
        "message = ping.send('unconfirmed')\n"
        "result = AsyncResult(message.message_id)\n"
        "deadline = time.monotonic() + 2\n"
        "while result.state == 'PENDING' and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print(message.message_id, result.state)\n"
    )
    env = {**os.environ, "PIPELINE_CONFIRM_DELIVERY": "false"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    message_id, state = out.stdout.split()
    assert state == "QUEUED"
    start_worker([DEFAULT_QUEUE], threads=1)
    assert AsyncResult(message_id).get(timeout=20) == {"pong": "unconfirmed"}


def test_a_revocation_reaches_every_worker_process(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    # One thread and a prefetch of one each: each worker process holds exactly one of the jobs.
    env = {"dramatiq_queue_prefetch": "1"}
    start_worker([DEFAULT_QUEUE], threads=1, env=env)
    start_worker([DEFAULT_QUEUE], threads=1, env=env)
    keys = [str(uuid.uuid4()) for _ in range(2)]
    results = [AsyncResult(sample_actors.steps.send(key, 200, 0.05).message_id) for key in keys]
    for key in keys:
        wait_until(lambda key=key: runs(clean_redis, key) >= 2, what=f"job {key} running")
    for result in results:
        assert result.revoke()
    for key in keys:
        assert 2 <= settled(lambda key=key: runs(clean_redis, key), what=f"steps of {key}") < 200
    assert all(result.state is JobState.REVOKED for result in results)

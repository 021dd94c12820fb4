"""Workers stopped and started while jobs flow, as a rolling deploy does: nothing is lost, no
job's effect happens twice, every record ends final, and a shutdown spends no attempt."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sample_actors
from cli_runner import run_cli
from services import ROOT
from waiting import wait_until

from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState
from pipeline.store.connection import get_redis

pytestmark = pytest.mark.integration

QUEUES = [DEFAULT_QUEUE, SLOW_QUEUE]
#: Worker restarts in the rolling-deploy test.
RESTARTS = 10
#: Threads sending the rolling-deploy test's jobs, 200 a second between them.
SENDERS = 4


def runs(redis_client, key: str) -> int:
    return int(redis_client.get(sample_actors.RUNS_PREFIX + key) or 0)


def records(redis_client, ids: list[str]) -> list[dict[str, str]]:
    keys = get_redis().keys
    pipe = redis_client.pipeline(transaction=False)
    for message_id in ids:
        pipe.hgetall(keys.record(message_id))
    return pipe.execute()


@pytest.mark.lasts(70)
def test_workers_restarted_every_five_seconds_under_200_jobs_a_second_lose_and_double_nothing(
    purge, start_worker, clean_redis
):
    for queue in QUEUES:
        purge(queue)
    env = {"PIPELINE_SHUTDOWN_GRACE": "3"}
    workers = [start_worker(QUEUES, threads=8, env=env) for _ in range(2)]
    sent: list[tuple[str, str]] = []  # (key, message id)
    stop_sending = threading.Event()

    def send(seed: int) -> None:
        # Each sender waits for its own confirms: several of them keep the load at 200 a
        # second when a confirm takes longer than the 5 ms between two sends.
        rng = random.Random(seed)
        next_at = time.monotonic()
        while not stop_sending.is_set():
            key = f"deploy-{uuid.uuid4()}"
            roll = rng.random()
            if roll < 0.002:
                message = sample_actors.long_steps.send(key, 40, 0.1)
            elif roll < 0.012:
                message = sample_actors.sleeps_then_counts.send(key, 2.0)
            else:
                message = sample_actors.count_runs.send(key)
            sent.append((key, message.message_id))
            next_at += SENDERS / 200
            time.sleep(max(0.0, next_at - time.monotonic()))

    senders = [threading.Thread(target=send, args=(11 + n,)) for n in range(SENDERS)]
    for sender in senders:
        sender.start()
    started = time.monotonic()
    # One worker restarted every 5 s, the two in turn, ten times; each stop and start takes its
    # own time, and one that takes longer than 5 s (on a busy machine) puts the next one off.
    for restarts in range(RESTARTS):
        time.sleep(max(0.0, started + 5 * (restarts + 1) - time.monotonic()))
        old = workers[restarts % 2]
        stopping = time.monotonic()
        old.stop()
        assert old.process.returncode == 0, old.log[-3000:]
        # Within the 3 s grace, and a few seconds to hand back, write the last records and exit.
        assert time.monotonic() - stopping < 10, old.log[-3000:]
        workers[restarts % 2] = start_worker(QUEUES, threads=8, env=env)
    # Jobs keep coming for 5 s after the last start, and for a minute at least.
    time.sleep(max(0.0, started + 60 - time.monotonic(), 5.0))
    stop_sending.set()
    for sender in senders:
        sender.join()
    rate = len(sent) / (time.monotonic() - started)

    ids = [message_id for _, message_id in sent]

    def all_final() -> bool:
        return all(r.get("state") in ('"SUCCESS"',) for r in records(clean_redis, ids))

    wait_until(all_final, 120, "every record final")
    time.sleep(2)  # a message handed back twice would have run again by now
    counts = clean_redis.mget([sample_actors.RUNS_PREFIX + key for key, _ in sent])
    assert [int(c or 0) for c in counts] == [1] * len(sent)
    interrupted = 0
    for record in records(clean_redis, ids):
        if "interrupted_at" in record:
            interrupted += 1
            assert int(record["attempt"]) >= 2
        else:
            # Handed back before it started, or never touched by a shutdown: its first attempt.
            assert record["attempt"] == "1", record
    print(f"{len(sent)} jobs at {rate:.0f}/s, {RESTARTS} restarts, {interrupted} interrupted")
    assert rate > 150


@pytest.mark.lasts(10)
def test_a_job_still_running_at_the_end_of_the_grace_is_interrupted_and_finished_by_the_next_worker(
    purge, start_worker, clean_redis
):
    purge(DEFAULT_QUEUE)
    worker = start_worker([DEFAULT_QUEUE], threads=2, env={"PIPELINE_SHUTDOWN_GRACE": "2"})
    key = f"grace-{uuid.uuid4()}"
    result = AsyncResult(sample_actors.sleeps_then_counts.send(key, 6.0).message_id)
    wait_until(lambda: result.state is JobState.STARTED, 10, "the start")
    began = time.monotonic()
    worker.stop()
    assert time.monotonic() - began < 5
    record = result.info()
    assert record["state"] == JobState.INTERRUPTED and record["attempt"] == 1
    assert "shutdown grace" in record["interrupted"]
    status = run_cli("status", result.id)
    assert "INTERRUPTED" in status.stdout and "shutdown grace" in status.stdout
    start_worker([DEFAULT_QUEUE], threads=2)
    assert result.get(timeout=20) == 1
    record = result.info()
    # The next delivery is the next attempt, and the actor's max_retries=0 was not spent.
    assert record["attempt"] == 2 and runs(clean_redis, key) == 1


@pytest.mark.lasts(11)
def test_a_job_that_checks_stops_when_asked_and_continues_as_the_next_attempt(purge, start_worker, clean_redis):
    purge(SLOW_QUEUE)
    # Jobs are asked to stop when a fifth of the grace is left: 0.6 s here, for a job that checks
    # every 0.05 s and then writes its record, on a machine the other tests keep busy.
    worker = start_worker([SLOW_QUEUE], threads=1, env={"PIPELINE_SHUTDOWN_GRACE": "3"})
    key = f"asked-{uuid.uuid4()}"
    result = AsyncResult(sample_actors.long_steps.send(key, 100, 0.05).message_id)
    wait_until(lambda: result.state is JobState.STARTED, 10, "the start")
    worker.stop()
    assert worker.process.returncode == 0
    assert "Shutdown grace over" not in worker.log
    record = result.info()
    assert record["state"] == JobState.INTERRUPTED and "shutting down" in record["interrupted"]
    start_worker([SLOW_QUEUE], threads=1)
    assert result.get(timeout=30) == 1
    assert result.info()["attempt"] == 2 and runs(clean_redis, key) == 1


@pytest.mark.lasts(11)
def test_sigkill_after_the_grace_began_still_loses_nothing(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    worker = start_worker([DEFAULT_QUEUE], threads=2)
    keys = [f"killed-{uuid.uuid4()}" for _ in range(12)]
    results = [AsyncResult(sample_actors.sleeps_then_counts.send(key, 3.0).message_id) for key in keys]
    wait_until(lambda: sum(r.state is JobState.STARTED for r in results) == 2, 10, "two starts")
    worker.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "Handed back" in worker.log, 10, "the hand-back")
    worker.kill()  # the platform's grace was shorter than the worker's
    start_worker([DEFAULT_QUEUE], threads=4)
    for result in results:
        assert result.get(timeout=40) == 1
    assert [runs(clean_redis, key) for key in keys] == [1] * len(keys)
    handed_back = [r.info() for r in results if r.info()["attempt"] == 1]
    assert len(handed_back) >= len(keys) - 2


def test_a_quiet_worker_takes_no_more_jobs_and_says_so(purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    worker = start_worker([DEFAULT_QUEUE], threads=2)
    wait_until(lambda: "default" in run_cli("workers").stdout, 10, "the worker listed")
    quiet = run_cli("workers", "quiet")
    assert quiet.returncode == 0 and "asked 1 worker" in quiet.stdout
    wait_until(lambda: "quiet" in run_cli("workers").stdout, 10, "the worker shown quiet")
    key = f"quiet-{uuid.uuid4()}"
    result = AsyncResult(sample_actors.count_runs.send(key).message_id)
    time.sleep(2)
    assert result.state is JobState.QUEUED and worker.process.poll() is None
    start_worker([DEFAULT_QUEUE], threads=2)
    assert result.get(timeout=15) == 1


#: A greenlet worker's SIGTERM handler run where gevent may run it: on the hub, the event loop's
#: own greenlet, where nothing may wait.
SIGTERM_ON_THE_HUB = """
from gevent import monkey

monkey.patch_all()

import logging
import queue
import signal
from types import SimpleNamespace

import gevent
from testenv import make_settings

from pipeline.jobs.shutdown import GracefulShutdown, Quiet
from pipeline.store.connection import RedisConnection
from pipeline.store.records import RecordStore

logging.basicConfig(level=logging.INFO)
settings = make_settings()
quiet = Quiet()
shutdown = GracefulShutdown(settings, quiet, RecordStore(RedisConnection(settings)))
shutdown.after_worker_boot(None, SimpleNamespace(consumers={}, worker_threads=1, work_queue=queue.Queue()))
gevent.get_hub().loop.run_callback(signal.getsignal(signal.SIGTERM), signal.SIGTERM, None)
gevent.sleep(1)
print("quiet" if quiet.is_set() else "not quiet")
"""


def test_a_greenlet_worker_goes_quiet_on_a_sigterm_handled_on_the_hub(clean_redis):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")])}
    out = subprocess.run(
        [sys.executable, "-c", SIGTERM_ON_THE_HUB], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.split() == ["quiet"], out.stderr
    assert "Worker goes quiet (SIGTERM)" in out.stderr
    assert "Error" not in out.stderr and "Traceback" not in out.stderr, out.stderr

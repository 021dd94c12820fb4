"""Delays and retry backoffs longer than RabbitMQ's ``consumer_timeout``, on a node of the test's
own whose timeout is 5 s: each job runs once, within a second of its time (or of the node's
return, when the node was down at its time), with no redelivery, across worker restarts and a
restart of the node, on classic and on quorum queues."""

from __future__ import annotations

import datetime
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sample_actors
from private_rabbitmq import PrivateRabbitMQ, running_node
from testenv import make_settings
from waiting import wait_until

from pipeline.broker import PipelineBroker, build_broker
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration

#: The node's consumer timeout, in milliseconds.
CONSUMER_TIMEOUT = 5_000
#: Seconds a job may start after its due time at most.
LATE_AT_MOST = 1.0


class Node:
    """A private node with a short consumer timeout, and the settings of its queue type."""

    def __init__(self, rabbitmq: PrivateRabbitMQ, queue_type: str) -> None:
        self.rabbitmq = rabbitmq
        self.queue_type = queue_type
        self.env = {
            "PIPELINE_BROKER_URL": rabbitmq.url,
            "PIPELINE_QUEUE_TYPE": queue_type,
            "PIPELINE_RABBITMQ_CONSUMER_TIMEOUT": str(CONSUMER_TIMEOUT),
            "PIPELINE_EXPORT_TIME_LIMIT": "4",
            "dramatiq_restart_delay": "500",
        }

    def broker(self) -> PipelineBroker:
        """A sender's broker for this node."""
        settings = make_settings(
            broker_url=self.rabbitmq.url,
            queue_type=self.queue_type,
            rabbitmq_consumer_timeout=CONSUMER_TIMEOUT,
            export_time_limit=4,
        )
        broker = build_broker(settings)
        for actor in (sample_actors.count_runs, sample_actors.fails_once_then_waits):
            broker.declare_actor(actor)
        return broker


@pytest.fixture(scope="module", params=["classic", "quorum"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    with running_node("pipeline-rabbitmq-delays-", f"consumer_timeout = {CONSUMER_TIMEOUT}\n") as rabbitmq:
        yield Node(rabbitmq, request.param)


def seconds(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def runs(redis_client, key: str) -> int:
    return int(redis_client.get(sample_actors.RUNS_PREFIX + key) or 0)


@pytest.mark.lasts(35)
def test_a_delay_and_a_backoff_past_the_timeout_run_once_on_time_across_restarts(node, start_worker, clean_redis):
    broker = node.broker()
    delayed, retried = f"delay-{uuid.uuid4()}", f"retry-{uuid.uuid4()}"
    worker = start_worker([DEFAULT_QUEUE], threads=2, env=node.env)
    sent = broker.enqueue(sample_actors.count_runs.message(delayed), delay=20_000)
    record = AsyncResult(sent.message_id).info()
    assert record["state"] == JobState.SCHEDULED and seconds(record["eta"]) > time.time() + 18
    failing = broker.enqueue(sample_actors.fails_once_then_waits.message(retried))
    wait_until(lambda: AsyncResult(failing.message_id).state is JobState.RETRY, 15, "the retry")
    retry_due = AsyncResult(failing.message_id).info()["next_attempt_at"]
    assert seconds(retry_due) > time.time() + CONSUMER_TIMEOUT / 1000
    # Mid-wait: the worker is killed and another starts, then the node restarts.
    time.sleep(3)
    worker.kill()
    start_worker([DEFAULT_QUEUE], threads=2, env=node.env)
    node.rabbitmq.restart()
    # A job due while the node was down (its restart takes longer on a busy machine) can run
    # only once it is back: then it is on time if it starts within a second of that.
    back = time.time()

    AsyncResult(sent.message_id).get(timeout=40)
    AsyncResult(failing.message_id).get(timeout=40)
    delay_done, retry_done = AsyncResult(sent.message_id).info(), AsyncResult(failing.message_id).info()
    for done, due in ((delay_done, delay_done["eta"]), (retry_done, retry_due)):
        assert done["state"] == JobState.SUCCESS
        started = seconds(done["started_at"])
        assert started >= seconds(due), done
        assert started - max(seconds(due), back) < LATE_AT_MOST, (done, f"node back at {back}")
        assert "cut_off" not in done, "redelivered"
    assert delay_done["attempt"] == 1 and retry_done["attempt"] == 2
    time.sleep(2 * CONSUMER_TIMEOUT / 1000)  # a held delivery would have come back by now
    assert runs(clean_redis, delayed) == 1 and runs(clean_redis, retried) == 2
    broker.close()


# Not marked alone: each job is held to what a job sent with no delay waits on this machine at
# the same time, so other tests beside it load both alike.
@pytest.mark.lasts(45)
# The classic queue carries the load test; both queue types take the restarts.
@pytest.mark.parametrize("node", ["classic"], indirect=True)
def test_ten_thousand_random_delays_each_run_once_and_on_time(node, start_worker, clean_redis):
    broker = node.broker()
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    with ThreadPoolExecutor(2) as starting:
        workers = list(starting.map(lambda _: start_worker([DEFAULT_QUEUE], threads=8, env=node.env), range(2)))
    prefix = f"many-{uuid.uuid4()}-"
    rng = random.Random(7)
    delays = [rng.randint(0, 30_000) for _ in range(10_000)]

    def send(n: int) -> str:
        return broker.enqueue(sample_actors.count_runs.message(f"{prefix}{n}"), delay=delays[n]).message_id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(send, range(len(delays))))
    # One worker restarted mid-wait; the other goes on.
    restart = threading.Timer(10, lambda: (workers[0].stop(), start_worker([DEFAULT_QUEUE], 8, node.env)))
    restart.start()
    # Jobs sent with no delay meanwhile, a few a second, measure what any job waits on this
    # machine at that time: the schedule is held to a second beyond that.
    undelayed: list[str] = []
    done_waiting = threading.Event()

    def send_undelayed() -> None:
        n = 0
        while not done_waiting.wait(0.025):
            undelayed.append(broker.enqueue(sample_actors.count_runs.message(f"{prefix}now-{n}")).message_id)
            n += 1

    sender = threading.Thread(target=send_undelayed)
    sender.start()
    keys = [f"{sample_actors.RUNS_PREFIX}{prefix}{n}" for n in range(len(delays))]
    wait_until(lambda: all(clean_redis.mget(keys)), 90, "every job run")
    done_waiting.set()
    sender.join()
    restart.join()
    time.sleep(2)
    counts = [int(c) for c in clean_redis.mget(keys)]
    assert counts == [1] * len(delays)
    pipe = clean_redis.pipeline(transaction=False)
    for message_id in ids:
        pipe.hmget(f"{AsyncResult(message_id)._store.keys.record(message_id)}", "state", "attempt", "eta", "started_at")
    late = []
    for state, attempt, eta, started_at in pipe.execute():
        assert (state, attempt) == ('"SUCCESS"', "1")
        lateness = seconds(started_at.strip('"')) - seconds(eta.strip('"'))
        assert lateness >= 0
        late.append(lateness)
    late.sort()
    wait_until(lambda: all(AsyncResult(i).state is JobState.SUCCESS for i in undelayed), 30, "the undelayed jobs")
    infos = [AsyncResult(message_id).info() for message_id in undelayed]
    waits = sorted(seconds(info["started_at"]) - seconds(info["enqueued_at"]) for info in infos)
    print(
        f"lateness: median {late[len(late) // 2]:.3f} s, p99 {late[int(len(late) * 0.99)]:.3f} s, max {late[-1]:.3f} s;"
        f" {len(waits)} undelayed jobs waited at most {waits[-1]:.3f} s"
    )
    assert late[-1] < waits[-1] + LATE_AT_MOST
    broker.close()

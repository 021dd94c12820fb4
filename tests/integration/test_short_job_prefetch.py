"""A worker's prefetch follows what its queue's actors declare: four per thread for short jobs
(another service's, on a queue pipeline does not know), unless the operator set one."""

from __future__ import annotations

import time
import uuid

import pytest
from services import queue_depth
from text_actors import TEXT_QUEUE, gate_key, send_text
from waiting import wait_until

from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("env", "left"),
    [
        # Two running and six behind them in the worker's memory; the rest wait in RabbitMQ.
        ({}, 4),
        # Two running and two behind them, as the operator asked (Dramatiq's own value), not
        # the eight of short jobs.
        ({"dramatiq_queue_prefetch": "4"}, 8),
    ],
    ids=["short-jobs", "operator-set"],
)
def test_a_worker_on_a_queue_of_short_jobs_takes_four_messages_per_thread_unless_told(
    purge, start_worker, amqp, clean_redis, env, left
):
    purge(TEXT_QUEUE)
    start_worker([TEXT_QUEUE], threads=2, env=env, modules=["pipeline.actors", "text_actors"])
    gate = uuid.uuid4().hex
    sent = [AsyncResult(send_text.send(n, gate=gate).message_id) for n in range(12)]
    wait_until(lambda: queue_depth(amqp, TEXT_QUEUE) == left, what=f"{12 - left} of the twelve taken by the worker")
    time.sleep(0.5)
    assert queue_depth(amqp, TEXT_QUEUE) == left
    clean_redis.set(gate_key(gate), 1)
    assert [result.get(timeout=20) for result in sent] == list(range(12))
    purge(TEXT_QUEUE)

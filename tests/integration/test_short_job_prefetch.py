"""A worker's prefetch follows what its queue's actors declare: four per thread for short jobs
(another service's, on a queue pipeline does not know)."""

from __future__ import annotations

import time
import uuid

import pytest
from services import queue_depth
from text_actors import TEXT_QUEUE, gate_key, send_text
from waiting import wait_until

from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration


def test_a_worker_on_a_queue_of_short_jobs_takes_four_messages_per_thread(purge, start_worker, amqp, clean_redis):
    purge(TEXT_QUEUE)
    start_worker([TEXT_QUEUE], threads=2, modules=["pipeline.actors", "text_actors"])
    gate = uuid.uuid4().hex
    sent = [AsyncResult(send_text.send(n, gate=gate).message_id) for n in range(12)]
    # Two running and six behind them in the worker's memory; the rest wait in RabbitMQ.
    wait_until(lambda: queue_depth(amqp, TEXT_QUEUE) == 4, what="eight of the twelve taken by the worker")
    time.sleep(0.5)
    assert queue_depth(amqp, TEXT_QUEUE) == 4
    clean_redis.set(gate_key(gate), 1)
    assert [result.get(timeout=20) for result in sent] == list(range(12))
    purge(TEXT_QUEUE)


def test_a_prefetch_the_operator_set_is_kept_even_at_dramatiq_s_own_value(purge, start_worker, amqp, clean_redis):
    purge(TEXT_QUEUE)
    env = {"dramatiq_queue_prefetch": "4"}
    start_worker([TEXT_QUEUE], threads=2, env=env, modules=["pipeline.actors", "text_actors"])
    gate = uuid.uuid4().hex
    sent = [AsyncResult(send_text.send(n, gate=gate).message_id) for n in range(12)]
    # Two running and two behind them, as the operator asked; not the eight of short jobs.
    wait_until(lambda: queue_depth(amqp, TEXT_QUEUE) == 8, what="four of the twelve taken by the worker")
    time.sleep(0.5)
    assert queue_depth(amqp, TEXT_QUEUE) == 8
    clean_redis.set(gate_key(gate), 1)
    assert [result.get(timeout=20) for result in sent] == list(range(12))
    purge(TEXT_QUEUE)

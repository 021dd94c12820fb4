"""Record writes held back to go to Redis together (an unconfirmed send's ``QUEUED``), on the
real Redis: each is made soon whatever its thread does next, in order, and a refusal is told."""

from __future__ import annotations

import threading
import uuid

import dramatiq
import pytest
from testenv import make_settings
from waiting import wait_until

from pipeline.errors import ResultBackendUnavailable
from pipeline.jobs.recording import JobRecords
from pipeline.states import JobState
from pipeline.store.records import get_store

pytestmark = pytest.mark.integration


def stored_state(client, message_id: str) -> str | None:
    """The state field as Redis holds it, read past the store."""
    return client.hget(get_store().keys.record(message_id), "state")


def test_a_held_write_is_made_though_its_thread_writes_nothing_more(clean_redis):
    message_id = str(uuid.uuid4())
    thread = threading.Thread(target=lambda: get_store().write_soon(message_id, JobState.QUEUED, actor="ping"))
    thread.start()
    thread.join(5)
    wait_until(lambda: stored_state(clean_redis, message_id) == '"QUEUED"', 2, "the held write made")


def test_a_threads_own_read_sees_the_writes_it_holds(clean_redis):
    store = get_store()
    message_id = str(uuid.uuid4())
    store.write_soon(message_id, JobState.QUEUED, actor="ping")
    assert store.state(message_id) is JobState.QUEUED
    assert store.read(message_id)["actor"] == "ping"


def test_held_writes_go_out_before_the_threads_next_write(clean_redis):
    store = get_store()
    held = [str(uuid.uuid4()) for _ in range(5)]
    for message_id in held:
        store.write_soon(message_id, JobState.QUEUED, actor="ping")
    store.write(str(uuid.uuid4()), JobState.QUEUED, actor="ping")
    assert [stored_state(clean_redis, message_id) for message_id in held] == ['"QUEUED"'] * 5


def test_a_held_write_redis_refuses_is_told_and_the_others_are_made(clean_redis):
    store = get_store()
    refused, made = str(uuid.uuid4()), str(uuid.uuid4())
    clean_redis.set(store.keys.record(refused), "not a hash")  # the write script answers WRONGTYPE
    told: list[ResultBackendUnavailable] = []
    store.write_soon(refused, JobState.QUEUED, on_lost=told.append, actor="ping")
    store.write_soon(made, JobState.QUEUED, on_lost=told.append, actor="ping")
    store.settle_thread()
    assert len(told) == 1 and "WRONGTYPE" in str(told[0])
    assert stored_state(clean_redis, made) == '"QUEUED"'


def test_an_unconfirmed_send_of_unknown_outcome_reads_queued(clean_redis):
    # Without publisher confirms the QUEUED write follows the publish; a publish that broke
    # midway may still reach a worker, so its record must say the job may be queued.
    store = get_store(make_settings(confirm_delivery=False))
    message = dramatiq.Message(queue_name="default", actor_name="ping", args=(1,), kwargs={}, options={})
    JobRecords(store).after_enqueue_outcome_unknown(dramatiq.get_broker(), message)
    assert store.state(message.message_id) is JobState.QUEUED

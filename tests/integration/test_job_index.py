"""The job index beside the records, and ``pipeline jobs`` reading it, on the real Redis."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import testenv
from cli_runner import run_cli

from pipeline.cli import RET_OK, RET_USAGE
from pipeline.states import JobState
from pipeline.store.keys import Keys
from pipeline.store.records import get_store
from pipeline.timestamps import now_iso

pytestmark = pytest.mark.integration

KEYS = Keys(testenv.NAMESPACE)


def job(actor: str, *states: JobState) -> str:
    """A job of ``actor`` written through ``states``; its id."""
    message_id = str(uuid.uuid4())
    store = get_store()
    for attempt, state in enumerate(states, 1):
        store.write(message_id, state, attempt=attempt, actor=actor, queue="default")
    return message_id


def members(redis_client, key: str) -> set[str]:
    return set(redis_client.zrange(key, 0, -1))


def test_a_job_is_indexed_under_its_current_state_and_its_actor_only(clean_redis):
    done = job("ping", JobState.QUEUED, JobState.STARTED, JobState.SUCCESS)
    assert done in members(clean_redis, KEYS.state_index("SUCCESS"))
    assert done not in members(clean_redis, KEYS.state_index("QUEUED"))
    assert done not in members(clean_redis, KEYS.state_index("STARTED"))
    assert done in members(clean_redis, KEYS.actor_index("ping"))


def test_forget_and_requeue_keep_the_index_true(clean_redis):
    store = get_store()
    forgotten = job("ping", JobState.QUEUED, JobState.SUCCESS)
    store.delete(forgotten)
    assert forgotten not in members(clean_redis, KEYS.state_index("SUCCESS"))
    assert forgotten not in members(clean_redis, KEYS.actor_index("ping"))
    failed = job("send_email", JobState.QUEUED, JobState.FAILURE)
    assert store.requeue(failed, now_iso())
    assert failed in members(clean_redis, KEYS.state_index("QUEUED"))
    assert failed not in members(clean_redis, KEYS.state_index("FAILURE"))


def test_members_older_than_a_record_can_live_are_pruned_as_the_sets_grow(clean_redis):
    stale = str(uuid.uuid4())
    clean_redis.zadd(KEYS.state_index("SUCCESS"), {stale: 1_000})
    clean_redis.zadd(KEYS.actor_index("ping"), {stale: 1_000})
    # About one add in sixteen prunes: 300 jobs miss both prunes with a chance below 1e-7.
    for _ in range(300):
        job("ping", JobState.QUEUED, JobState.SUCCESS)
        if not {stale} & (
            members(clean_redis, KEYS.state_index("SUCCESS")) | members(clean_redis, KEYS.actor_index("ping"))
        ):
            break
    assert stale not in members(clean_redis, KEYS.state_index("SUCCESS"))
    assert stale not in members(clean_redis, KEYS.actor_index("ping"))


def test_a_job_waiting_longer_than_the_ttl_stays_listed_while_its_record_lives(clean_redis):
    # A prune took every member older than the record TTL: a job scheduled (or retrying) two
    # days ago for a week later left `pipeline jobs --state SCHEDULED` and its actor's list,
    # though its record, which lives until it is due, still read SCHEDULED.
    from pipeline.timestamps import iso_from_millis

    store = get_store()
    waiting = str(uuid.uuid4())
    due = iso_from_millis((time.time() + 7 * 86_400) * 1000)
    store.write(waiting, JobState.SCHEDULED, actor="ping", queue="default", eta=due)
    long_ago = (time.time() - 10 * 86_400) * 1_000_000
    stale = str(uuid.uuid4())
    for key in (KEYS.state_index("SCHEDULED"), KEYS.actor_index("ping")):
        clean_redis.zadd(key, {waiting: long_ago, stale: long_ago})
    soon = iso_from_millis((time.time() + 60) * 1000)
    # About one add in sixteen prunes: go on until both sets lost the member with no record.
    for _ in range(300):
        store.write(str(uuid.uuid4()), JobState.SCHEDULED, actor="ping", queue="default", eta=soon)
        if not {stale} & (
            members(clean_redis, KEYS.state_index("SCHEDULED")) | members(clean_redis, KEYS.actor_index("ping"))
        ):
            break
    assert stale not in members(clean_redis, KEYS.actor_index("ping"))
    assert stale not in members(clean_redis, KEYS.state_index("SCHEDULED"))
    assert waiting in members(clean_redis, KEYS.state_index("SCHEDULED"))
    assert waiting in members(clean_redis, KEYS.actor_index("ping"))
    assert waiting in [r["message_id"] for r in store.recent(state=JobState.SCHEDULED, limit=1000)]


def test_recent_lists_newest_first_by_state_and_actor_skipping_expired_records(clean_redis):
    first = job("ping", JobState.QUEUED, JobState.FAILURE)
    second = job("send_email", JobState.QUEUED, JobState.FAILURE)
    third = job("ping", JobState.QUEUED, JobState.SUCCESS)
    expired = job("ping", JobState.QUEUED, JobState.SUCCESS)
    clean_redis.delete(KEYS.record(expired))
    store = get_store()
    assert [r["message_id"] for r in store.recent()] == [third, second, first]
    assert [r["message_id"] for r in store.recent(state=JobState.FAILURE)] == [second, first]
    assert [r["message_id"] for r in store.recent(actor="ping")] == [third, first]
    assert [r["message_id"] for r in store.recent(actor="ping", state=JobState.FAILURE)] == [first]
    assert [r["message_id"] for r in store.recent(limit=1)] == [third]
    assert store.recent(since=time.time() + 60) == []


@pytest.mark.lasts(14)
def test_pipeline_jobs_lists_and_filters_as_json(clean_redis):
    failed = job("send_email", JobState.QUEUED, JobState.FAILURE)
    job("ping", JobState.QUEUED, JobState.SUCCESS)
    out = run_cli("jobs", "--state", "failure", "--since", "1h", "--json")
    assert out.returncode == RET_OK, out.stderr
    assert [r["message_id"] for r in json.loads(out.stdout)] == [failed]
    table = run_cli("jobs", "--actor", "ping")
    assert table.returncode == RET_OK and "SUCCESS" in table.stdout and failed not in table.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--since", "yesterday"], "not an age"),
        # More digits than a float holds: an OverflowError traceback.
        pytest.param(["--since", "9" * 400 + "d"], "not an age", id="since-endless"),
        (["--state", "DONE"], "not a state"),
    ],
)
def test_pipeline_jobs_refuses_a_bad_filter_naming_it(args, reason):
    out = run_cli("jobs", *args)
    assert out.returncode == RET_USAGE and reason in out.stderr

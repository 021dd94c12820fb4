"""Redis as users run it past one machine, each on servers of the test's own: TLS with a CA
bundle and an ACL user, and Sentinel with a failover that records survive."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
import testenv
from private_services import sentinel_setup, tls_redis
from testenv import make_settings
from waiting import wait_until

from pipeline.errors import ResultBackendUnavailable
from pipeline.states import JobState
from pipeline.store.connection import RedisConnection
from pipeline.store.records import RecordStore

pytestmark = pytest.mark.integration


def store_for(**settings) -> RecordStore:
    return RecordStore(RedisConnection(make_settings(**settings)))


def test_records_go_over_tls_to_an_acl_user_with_the_ca_bundle_of_the_settings(tmp_path, servers):
    port, ca_file = tls_redis(tmp_path, servers, "shop", "s3cret-pw")
    store = store_for(redis_url=f"rediss://shop:s3cret-pw@localhost:{port}/0", redis_ca_file=ca_file)
    message_id = str(uuid.uuid4())
    store.write(message_id, JobState.QUEUED, actor="ping", queue="default")
    store.write(message_id, JobState.SUCCESS, result={"pong": 1})
    assert store.wait(message_id, timeout=5)["result"] == {"pong": 1}


def test_a_wrong_password_or_an_unknown_ca_fails_with_the_password_masked(tmp_path, servers):
    port, ca_file = tls_redis(tmp_path, servers, "shop", "s3cret-pw")
    wrong = store_for(redis_url=f"rediss://shop:not-it@localhost:{port}/0", redis_ca_file=ca_file)
    with pytest.raises(ResultBackendUnavailable) as refused:
        wrong.state(str(uuid.uuid4()))
    assert "shop:***@localhost" in str(refused.value) and "not-it" not in str(refused.value)
    unknown_ca = store_for(redis_url=f"rediss://shop:s3cret-pw@localhost:{port}/0")
    with pytest.raises(ResultBackendUnavailable, match="certificate"):
        unknown_ca.state(str(uuid.uuid4()))


@pytest.mark.lasts(22)
def test_records_follow_a_sentinel_failover_and_a_refused_write_is_made_on_the_new_primary(tmp_path, servers):
    old_primary, replica, sentinel = sentinel_setup(tmp_path, servers, "shop-records")
    store = store_for(redis_url=f"redis+sentinel://127.0.0.1:{sentinel}/shop-records/0")
    before = str(uuid.uuid4())
    store.write(before, JobState.QUEUED, actor="ping", queue="default")
    wait_until(
        lambda: redis.Redis(port=replica).exists(f"{testenv.NAMESPACE}:job:{before}"), what="the record replicated"
    )

    redis.Redis(port=sentinel).execute_command("SENTINEL", "FAILOVER", "shop-records")
    wait_until(
        lambda: redis.Redis(port=old_primary).info("replication")["role"] == "slave",
        timeout=20,
        what="the old primary turned replica",
    )
    # The store's connection is still on the old primary, now read-only: the writes it refuses
    # are kept, and the catch-up makes them on the new primary that Sentinel names.
    after = str(uuid.uuid4())
    store.begin_write(after, JobState.QUEUED, keep=True, actor="ping", queue="default")
    store.begin_write(before, JobState.SUCCESS, attempt=1, keep=True, result={"pong": 2})
    store.flush()
    deadline = time.monotonic() + 20
    while store.kept and time.monotonic() < deadline:
        try:
            store.catch_up()
        except ResultBackendUnavailable:
            time.sleep(0.2)
    new_primary = redis.Redis(port=replica, decode_responses=True)
    assert new_primary.info("replication")["role"] == "master"
    assert new_primary.hget(f"{testenv.NAMESPACE}:job:{before}", "state") == '"SUCCESS"'
    assert new_primary.hget(f"{testenv.NAMESPACE}:job:{after}", "state") == '"QUEUED"'
    assert store.write(str(uuid.uuid4()), JobState.QUEUED, actor="ping")[0]

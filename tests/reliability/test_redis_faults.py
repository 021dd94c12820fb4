"""Redis misbehaving (error replies, frozen, down and back) against a Redis of the test's own:
no send or wait hangs, no job is lost, and every record ends final with its own result."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from cli_runner import run_cli
from ports import free_port
from services import ROOT, queue_depth
from testenv import make_settings
from waiting import wait_until

from pipeline.cli.exit_codes import RET_ERROR
from pipeline.errors import JobTimeout, ResultBackendUnavailable
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration

#: Seconds a send may take at most while Redis misbehaves: a bound on hangs, not a speed goal.
SEND_BOUND = 5


def fault_env(private_redis) -> dict[str, str]:
    return {
        "PIPELINE_REDIS_URL": private_redis.url,
        "PIPELINE_REDIS_SOCKET_TIMEOUT": "1",
        "PIPELINE_REDIS_CONNECT_TIMEOUT": "1",
    }


def five_second_timeouts(private_redis, **more: str) -> dict[str, str]:
    """:func:`fault_env` with the settings' connect and socket timeouts at 5 s: waits a caller
    must not sit through."""
    return {
        **fault_env(private_redis),
        "PIPELINE_REDIS_SOCKET_TIMEOUT": "5",
        "PIPELINE_REDIS_CONNECT_TIMEOUT": "5",
        **more,
    }


def send_while_frozen(private_redis, env: dict[str, str], count: int, **options) -> tuple[dict, str]:
    """:func:`send` ``count`` pings while the test's Redis is frozen."""
    private_redis.freeze()
    try:
        return send(env, "ping", count, **options)
    finally:
        private_redis.thaw()


#: Sending with publisher confirms (the default) and without: the record's promises hold in both.
CONFIRMS = pytest.mark.parametrize("confirms", ["true", "false"], ids=["confirms on", "confirms off"])


def send(
    env: dict[str, str],
    actor: str,
    count: int,
    confirms: str = "true",
    many: int | None = None,
    delay: int | None = None,
) -> tuple[dict, str]:
    """Send from a service process of its own (with ``many``, in one ``send_many`` of batches of
    that size; with ``delay``, each message delayed so many milliseconds); its outcome and what
    it printed on stderr."""
    batches = [] if many is None else ["--many", str(many)]
    batches += [] if delay is None else ["--delay", str(delay)]
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "sender.py"), actor, str(count), *batches],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "PIPELINE_CONFIRM_DELIVERY": confirms,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


def results(private_redis, message_ids):
    settings = make_settings(redis_url=private_redis.url, redis_socket_timeout=2.0)
    return [AsyncResult(message_id, settings) for message_id in message_ids]


def all_pinged(private_redis, message_ids) -> bool:
    """Every job ended SUCCESS with its own result (ping n answers n): no answer was mismatched."""
    try:
        records = [r.info() for r in results(private_redis, message_ids)]
    except ResultBackendUnavailable:
        return False
    return all(
        record is not None and record["state"] == "SUCCESS" and record["result"] == {"pong": n}
        for n, record in enumerate(records)
    )


@pytest.fixture
def fault_worker(private_redis, purge, start_worker):
    purge(DEFAULT_QUEUE)
    env = fault_env(private_redis)
    worker = start_worker([DEFAULT_QUEUE], threads=2, env=env)
    warm, _ = send(env, "ping", 3)
    wait_until(lambda: all_pinged(private_redis, warm["sent"]), what="the warm-up jobs")
    return worker


@CONFIRMS
def test_error_replies_are_consumed_and_the_writes_made_once_redis_takes_them(private_redis, fault_worker, confirms):
    env = fault_env(private_redis)
    client = private_redis.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    outcome, stderr = send(env, "ping", 20, confirms)
    assert outcome["errors"] == {} and len(outcome["sent"]) == 20
    assert max(outcome["seconds"]) < SEND_BOUND
    assert stderr.count("QUEUED record was not written") == 20 and "Traceback" not in stderr
    wait_until(lambda: "record writes wait for Redis" in fault_worker.log, what="the worker keeping its writes")
    client.config_set("maxmemory", "0")
    wait_until(lambda: all_pinged(private_redis, outcome["sent"]), 30, "every record final with its own result")


@CONFIRMS
def test_a_frozen_redis_hangs_neither_senders_nor_waiters(private_redis, fault_worker, confirms):
    env = fault_env(private_redis)
    private_redis.freeze()
    try:
        outcome, stderr = send(env, "ping", 3, confirms)
        assert outcome["errors"] == {} and max(outcome["seconds"]) < SEND_BOUND
        assert "Traceback" not in stderr
        (waiter,) = results(private_redis, outcome["sent"][:1])
        started = time.monotonic()
        with pytest.raises((ResultBackendUnavailable, JobTimeout)):
            waiter.get(timeout=1)
        assert time.monotonic() - started < SEND_BOUND
    finally:
        private_redis.thaw()
    wait_until(lambda: all_pinged(private_redis, outcome["sent"]), 30, "every record final once Redis runs again")


@CONFIRMS
def test_jobs_sent_and_run_while_redis_is_down_get_their_records_when_it_is_back(
    private_redis, fault_worker, amqp, confirms
):
    env = fault_env(private_redis)
    private_redis.stop()
    outcome, stderr = send(env, "ping", 5, confirms)
    assert outcome["errors"] == {} and max(outcome["seconds"]) < SEND_BOUND
    assert stderr.count("QUEUED record was not written") == 5 and "Traceback" not in stderr
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE) == 0, what="the jobs taken by the worker")
    wait_until(lambda: "record writes wait for Redis" in fault_worker.log, what="the worker keeping its writes")
    private_redis.start()
    wait_until(lambda: all_pinged(private_redis, outcome["sent"]), 30, "every record final once Redis is back")
    record = results(private_redis, outcome["sent"][:1])[0].info()
    assert record["actor"] == "ping" and record["queue"] == DEFAULT_QUEUE and record["attempt"] == 1
    assert JobState(record["state"]) is JobState.SUCCESS


@pytest.mark.parametrize("follow", [[], ["--follow"]], ids=["wait", "follow"])
def test_pipeline_status_wait_ends_within_a_second_of_its_wait_when_redis_is_frozen(private_redis, follow):
    # Its reads waited the socket timeout (5 s) each, and the process waited 2 s more at exit
    # for the answers of reads nobody would read: over 5 s for --wait 1.
    env = five_second_timeouts(private_redis)
    private_redis.freeze()
    try:
        started = time.monotonic()
        out = run_cli("status", str(uuid.uuid4()), "--wait", "1", *follow, **env)
        elapsed = time.monotonic() - started
    finally:
        private_redis.thaw()
    # One second of wait, half a second for the last read, and the interpreter's start.
    assert elapsed < 3.5, elapsed
    assert out.returncode == RET_ERROR and "did not answer within" in out.stderr, out.stderr


@CONFIRMS
def test_a_frozen_redis_costs_a_send_no_socket_timeout_and_a_wait_no_more_than_its_own(private_redis, confirms):
    # The settings' socket timeout (5 s) is far above what a caller gives: a send must not wait
    # for it before or after its publish, and a wait must end within a second of its timeout,
    # a new connection's handshake included.
    env = five_second_timeouts(private_redis)
    private_redis.freeze()
    try:
        outcome, _ = send(env, "ping", 4, confirms)
        assert outcome["errors"] == {} and max(outcome["seconds"]) < 1.0, outcome["seconds"]
        waiter = AsyncResult(outcome["sent"][0], make_settings(redis_url=private_redis.url, redis_socket_timeout=5.0))
        started = time.monotonic()
        with pytest.raises((ResultBackendUnavailable, JobTimeout)):
            waiter.get(timeout=1.5)
        assert time.monotonic() - started < 2.5
    finally:
        private_redis.thaw()


def test_a_frozen_redis_costs_send_many_a_moment_per_batch_not_its_timeouts(private_redis, purge, amqp):
    # A batch's QUEUED records are written once RabbitMQ has committed it: like a send's after
    # its confirm, they are awaited a moment, not the settings' timeouts (5 s) for every batch.
    purge(DEFAULT_QUEUE)
    outcome, stderr = send_while_frozen(private_redis, five_second_timeouts(private_redis), 6, many=2)
    try:
        assert outcome["errors"] == {} and len(outcome["sent"]) == 6
        assert outcome["seconds"][0] < 2.0, outcome["seconds"]
        assert stderr.count("QUEUED records were not written") == 3 and "Traceback" not in stderr
        assert queue_depth(amqp, DEFAULT_QUEUE) == 6
    finally:
        purge(DEFAULT_QUEUE)


def test_a_frozen_redis_costs_a_delayed_send_a_moment_and_its_message_waits_in_the_dq(private_redis, purge, amqp):
    # A delayed message is kept in Redis until due; when Redis does not take it in a moment, it
    # goes to the queue's .DQ (a worker moves it to the schedule once Redis is back), not after
    # the settings' socket timeout (5 s) for every send.
    purge(DEFAULT_QUEUE)
    outcome, stderr = send_while_frozen(private_redis, five_second_timeouts(private_redis), 3, delay=60_000)
    try:
        assert outcome["errors"] == {} and max(outcome["seconds"]) < 1.0, outcome["seconds"]
        assert stderr.count("goes to default.DQ") == 3 and "Traceback" not in stderr
        assert queue_depth(amqp, f"{DEFAULT_QUEUE}.DQ") == 3
    finally:
        purge(DEFAULT_QUEUE)


def test_a_send_rabbitmq_refuses_with_redis_frozen_fails_in_a_moment(private_redis):
    # RabbitMQ away and Redis frozen at once: the send raises BrokerUnavailable, and taking back
    # its QUEUED record waits for Redis a moment, not the settings' timeouts.
    env = five_second_timeouts(private_redis, PIPELINE_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    outcome, stderr = send_while_frozen(private_redis, env, 2)
    assert all(error.startswith("BrokerUnavailable") for error in outcome["errors"].values()), outcome["errors"]
    assert len(outcome["errors"]) == 2 and max(outcome["seconds"]) < 2.0, outcome["seconds"]
    assert "Traceback" not in stderr


def test_a_send_with_an_idempotency_key_needs_redis_first_and_publishes_nothing_without(private_redis, purge, amqp):
    # The key is taken in Redis before the publish: with Redis frozen the send fails within the
    # settings' timeouts, publishing nothing, and can be sent again once Redis answers.
    from pipeline.broker import build_broker
    from pipeline.jobs.actor_class import actor

    purge(DEFAULT_QUEUE)
    broker = build_broker(
        make_settings(redis_url=private_redis.url, redis_socket_timeout=1.0, redis_connect_timeout=1.0)
    )
    echo = actor(lambda n: n, actor_name="echo_once", queue_name=DEFAULT_QUEUE, broker=broker)
    private_redis.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(ResultBackendUnavailable):
            echo.send(1, idempotency_key="order-1")
        assert time.monotonic() - started < 1.0 + SEND_BOUND
    finally:
        private_redis.thaw()
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0
    first = echo.send(1, idempotency_key="order-1")
    assert echo.send(1, idempotency_key="order-1").message_id == first.message_id
    assert queue_depth(amqp, DEFAULT_QUEUE) == 1
    purge(DEFAULT_QUEUE)
    broker.close()


@pytest.mark.lasts(9)
def test_a_worker_stopped_while_redis_is_frozen_exits_at_the_end_of_its_grace(private_redis, purge, start_worker, amqp):
    # Jobs whose finished-job check waits on a frozen Redis are still running when the grace
    # ends: the worker records them INTERRUPTED and leaves the worker list in a moment each, not
    # with the settings' timeouts on top of its grace (a container's platform kills it at 30 s).
    purge(DEFAULT_QUEUE)
    grace = 2
    env = five_second_timeouts(private_redis, PIPELINE_SHUTDOWN_GRACE=str(grace))
    worker = start_worker([DEFAULT_QUEUE], threads=2, env=env)
    warm, _ = send(env, "ping", 3)
    wait_until(lambda: all_pinged(private_redis, warm["sent"]), what="the warm-up jobs")
    private_redis.freeze()
    try:
        send(env, "ping", 3)
        # Held by the worker: those its threads took wait on their finished-job checks.
        wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE) == 0, what="the worker holding the jobs")
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(60)
        took = time.monotonic() - started
    finally:
        private_redis.thaw()
    assert took < grace + 2, took
    # What still ran (one or both threads' jobs, as the deliveries fell) was cut at the grace.
    assert re.search(r"Shutdown grace over: [12] jobs still running are handed back", worker.log), worker.log
    purge(DEFAULT_QUEUE)

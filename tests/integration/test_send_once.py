"""Sends that happen once: a second send with the same idempotency key publishes nothing and
returns the first job's id, even from 50 processes at once, and a key whose sender died before
publishing is taken over."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import testenv
from sample_actors import RUNS_PREFIX, count_runs
from services import ROOT, queue_depth
from testenv import make_settings
from waiting import wait_until

from pipeline.actors import ping
from pipeline.errors import InvalidIdempotencyKey, InvalidMessage, InvalidPriority
from pipeline.jobs.send_once import send_once
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration


def test_a_second_send_with_the_key_publishes_nothing_and_returns_the_first_id(purge, amqp, clean_redis):
    purge(DEFAULT_QUEUE)
    first = ping.send(1, idempotency_key="order-1001-confirmation")
    again = ping.send(1, idempotency_key="order-1001-confirmation")
    other = ping.send(1, idempotency_key="order-1002-confirmation")
    assert again.message_id == first.message_id != other.message_id
    assert queue_depth(amqp, DEFAULT_QUEUE) == 2
    assert AsyncResult(first.message_id).state.value == "QUEUED"


def test_the_same_key_for_another_actor_is_another_send(purge, amqp, clean_redis):
    purge(DEFAULT_QUEUE)
    assert ping.send(1, idempotency_key="k").message_id != count_runs.send("x", idempotency_key="k").message_id


@pytest.mark.parametrize("key", ["", "k" * 201, "a\nb", "tab\there", 5], ids=["empty", "long", "newline", "tab", "int"])
def test_an_invalid_key_is_refused_at_send_with_nothing_queued(purge, amqp, clean_redis, key):
    purge(DEFAULT_QUEUE)
    with pytest.raises(InvalidIdempotencyKey, match="idempotency_key must be text of 1 to 200 printable"):
        ping.send(1, idempotency_key=key)
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0
    assert list(clean_redis.scan_iter(f"{testenv.NAMESPACE}:*")) == []


# One interpreter imports the actors (nothing connects at import), then forks the senders: fifty
# processes racing for one key, without fifty interpreters' imports loading the machine.
SENDERS = """
import os, sys, time, traceback, pathlib
import sample_actors
go = pathlib.Path(sys.argv[1])
children = []
for _ in range(int(sys.argv[4])):
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.write(1, b"ready\\n")  # one write each: the fifty share the pipe
            while not go.exists():
                time.sleep(0.005)
            message = sample_actors.count_runs.send(sys.argv[2], idempotency_key=sys.argv[3])
            os.write(1, message.message_id.encode() + b"\\n")
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    children.append(pid)
sys.exit(sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children))
"""


@pytest.mark.lasts(8)
def test_fifty_processes_sending_one_key_at_once_publish_one_job(purge, start_worker, clean_redis, tmp_path):
    purge(DEFAULT_QUEUE)
    counter = f"once-{uuid.uuid4()}"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")])}
    command = [sys.executable, "-c", SENDERS, str(go), counter, f"key-{counter}", "50"]
    # A session of their own: the forked senders are killed with their parent, whatever happens.
    senders = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert [senders.stdout.readline().strip() for _ in range(50)] == ["ready"] * 50
        go.touch()
        out = senders.communicate(timeout=60)[0].split()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(senders.pid, signal.SIGKILL)
        senders.wait()
    assert senders.returncode == 0 and len(out) == 50
    ids = set(out)
    assert len(ids) == 1
    start_worker([DEFAULT_QUEUE], threads=2)
    assert AsyncResult(ids.pop()).get(timeout=20) == 1
    time.sleep(0.5)  # another job of the key would have run by now
    assert clean_redis.get(RUNS_PREFIX + counter) == "1"


DIES_AFTER_TAKING = """
import os, signal, sys
from pipeline.store.connection import get_redis
from pipeline.store.send_keys import SendKeys
SendKeys(get_redis()).take("count_runs", sys.argv[1], sys.argv[2])
os.kill(os.getpid(), signal.SIGKILL)  # between taking the key and publishing
"""


def test_a_key_whose_sender_was_killed_before_publishing_is_taken_over_and_runs_once(
    purge, amqp, start_worker, clean_redis
):
    purge(DEFAULT_QUEUE)
    counter, key = f"killed-{uuid.uuid4()}", f"order-{uuid.uuid4()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", DIES_AFTER_TAKING, key, str(uuid.uuid4())], env=env, timeout=60)
    assert killed.returncode == -9
    (taken,) = clean_redis.scan_iter(f"{testenv.NAMESPACE}:send-key:count_runs:*")
    taken_at = json.loads(clean_redis.get(taken))["claimed_at"]  # the dead sender's clock
    settings = make_settings(idempotency_takeover=0.5)
    published: list[str] = []

    def publish(m):
        published.append(m.message_id)
        return count_runs.broker.enqueue(m)

    retried = send_once(count_runs.message_with_options(args=(counter,)), key, publish, settings)
    # It waited out the dead sender's bound, counted from when that sender took the key.
    assert time.time() - taken_at >= 0.5
    again = send_once(count_runs.message_with_options(args=(counter,)), key, publish, settings)
    assert again.message_id == retried.message_id and published == [retried.message_id]
    start_worker([DEFAULT_QUEUE], threads=2)
    assert AsyncResult(retried.message_id).get(timeout=20) == 1
    time.sleep(0.5)
    assert clean_redis.get(RUNS_PREFIX + counter) == "1"
    stored = json.loads(clean_redis.get(next(clean_redis.scan_iter(f"{testenv.NAMESPACE}:send-key:count_runs:*"))))
    assert stored["message_id"] == retried.message_id


def test_a_send_refused_at_send_gives_its_key_back(purge, amqp, clean_redis):
    purge(DEFAULT_QUEUE)
    with pytest.raises(InvalidPriority, match=r"outside 0\.\.10"):
        ping.send(1, priority=99, idempotency_key="order-8")
    assert ping.send(1, idempotency_key="order-8").message_id
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE) == 1, what="the second send published")


def test_a_send_whose_delay_is_refused_gives_its_key_back(purge, amqp, clean_redis):
    purge(DEFAULT_QUEUE)
    with pytest.raises(InvalidMessage, match="delay 'soon' is not a number of milliseconds"):
        ping.send_with_options(args=(1,), delay="soon", idempotency_key="order-9")
    assert ping.send(1, idempotency_key="order-9").message_id
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE) == 1, what="the second send published")


def test_send_many_publishes_only_the_calls_whose_keys_are_new(purge, amqp, clean_redis):
    purge(DEFAULT_QUEUE)
    earlier = ping.send(0, idempotency_key="bulk-0")
    sent = ping.send_many(
        [{"payload": n} for n in range(4)], idempotency_keys=["bulk-0", "bulk-1", None, "bulk-1"], batch_size=2
    )
    assert sent[0].message_id == earlier.message_id
    assert sent[3].message_id == sent[1].message_id != sent[2].message_id
    assert queue_depth(amqp, DEFAULT_QUEUE) == 3  # the earlier send, bulk-1 once, the call without a key
    again = ping.send_many([{"payload": 1}], idempotency_keys=["bulk-1"])
    assert again[0].message_id == sent[1].message_id
    assert queue_depth(amqp, DEFAULT_QUEUE) == 3


def test_send_many_wants_one_key_per_call(clean_redis):
    with pytest.raises(ValueError, match="idempotency_keys holds 1 keys for 2 calls"):
        ping.send_many([{"payload": 1}, {"payload": 2}], idempotency_keys=["only-one"])


@pytest.mark.parametrize("keys", ["ab", b"ab"], ids=["text", "bytes"])
def test_send_many_refuses_keys_given_as_one_text_and_publishes_nothing(purge, amqp, clean_redis, keys):
    # A text is a sequence: its characters were taken as one key per call.
    purge(DEFAULT_QUEUE)
    with pytest.raises(InvalidIdempotencyKey, match="idempotency_keys is not a list of keys, one per call, but"):
        ping.send_many([{"payload": 1}, {"payload": 2}], idempotency_keys=keys)
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0


# A text is refused call by call, naming its first character (see test_broker).
@pytest.mark.parametrize("calls", [None, 7, {"payload": 1}], ids=["none", "number", "mapping"])
def test_send_many_refuses_what_is_not_a_list_of_calls_naming_it(purge, amqp, clean_redis, calls):
    purge(DEFAULT_QUEUE)
    with pytest.raises(InvalidMessage, match="ping: send_many takes a list of calls"):
        ping.send_many(calls)
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0

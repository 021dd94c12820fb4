"""A job's life through a real worker, RabbitMQ and Redis: states, retries, failures, revoke."""

from __future__ import annotations

import datetime
import json
import math
import re
import subprocess
import sys
import time
import uuid

import pytest
import redis
import sample_actors
import testenv
from services import ROOT, WorkerProcess, queue_depth
from testenv import make_settings
from waiting import settled, wait_until

from pipeline.actors import ping
from pipeline.broker import broker
from pipeline.errors import InvalidTimeout, JobRevoked, JobTimeout, PermanentError
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult, report_progress
from pipeline.states import JobState
from pipeline.store.records import get_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(redis_client, amqp):
    """One worker on the default queue for the whole module, started on an empty queue."""
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    broker.flush(DEFAULT_QUEUE)
    process = WorkerProcess([DEFAULT_QUEUE], threads=4, env={}, modules=["pipeline.actors", "sample_actors"])
    yield process
    process.discard()


def wait_for_state(result: AsyncResult, state: JobState, timeout: float = 10) -> dict:
    def reached():
        record = result.info()
        return record if record and record["state"] == state.value else None

    return wait_until(reached, timeout, f"{result.id} reaching {state}")


def runs(redis_client, key: str) -> int:
    return int(redis_client.get(sample_actors.RUNS_PREFIX + key) or 0)


def test_send_then_get_from_a_process_that_never_imported_the_actors(worker):
    message = ping.send({"order": 17})
    script = (
        "import json, sys\n"
        "from pipeline.results import AsyncResult\n"
        f"print(json.dumps(AsyncResult({message.message_id!r}).get(timeout=20)))\n"
        "assert not {'pipeline.actors', 'pipeline.broker', 'dramatiq', 'pika'} & set(sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"pong": {"order": 17}}


def test_a_message_sent_by_name_to_an_actor_another_service_declares_is_checked_and_runs(worker, caplog):
    # A sender that does not declare the actor (it is another service's, or a pipeline's next
    # step) sends a Message by name, as Dramatiq lets it: two checks failed on the unknown
    # actor with a CRITICAL traceback each, and what they check went unchecked.
    import dramatiq

    from pipeline.broker import build_broker
    from pipeline.errors import InvalidMessage, InvalidPriority
    from pipeline.settings import get_settings

    sender = build_broker(get_settings())
    by_name = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=(7,), kwargs={}, options={})
    with caplog.at_level("WARNING"):
        sender.enqueue(by_name)
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert AsyncResult(by_name.message_id).get(timeout=20) == {"pong": 7}
    nan = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=(math.nan,), kwargs={}, options={})
    with pytest.raises(InvalidMessage, match="argument 1 is not a JSON value"):
        sender.enqueue(nan)
    loud = by_name.copy(message_id=str(uuid.uuid4()), options={"broker_priority": 99})
    with pytest.raises(InvalidPriority, match=r"outside 0\.\.10"):
        sender.enqueue(loud)
    long = by_name.copy(message_id=str(uuid.uuid4()), options={"time_limit": "soon"})
    with pytest.raises(InvalidMessage, match="option time_limit 'soon' is not a number"):
        sender.enqueue(long)
    # Its name is each message's AMQP type: one longer than that carries failed the publish
    # with pika's ShortStringTooLong, after the QUEUED record was written.
    unnamed = [
        dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name=name, args=(), kwargs={}, options={})
        for name in ("é" * 128, "", "ping\n")
    ]
    for message in unnamed:
        with pytest.raises(InvalidMessage, match=r"actor_name .* is not printable text of 1 to 255 bytes"):
            sender.enqueue(message)
    far = by_name.copy(message_id=str(uuid.uuid4()), queue_name="q" * 300)
    with pytest.raises(InvalidMessage, match="queue name of 300 bytes is longer than 252"):
        sender.enqueue(far)
    checked = (nan, loud, long, far, *unnamed)
    assert [AsyncResult(m.message_id).state for m in checked] == [JobState.PENDING] * len(checked)
    sender.close()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        # A QUEUED record was written, then pika's struct.error left the caller and the record.
        ("message_timestamp", -1000, "message_timestamp -1000 is not a time between 1970 and the year 9999"),
        ("message_timestamp", 1.5, "message_timestamp 1.5 is not a whole number of milliseconds"),
        ("message_timestamp", "x", "message_timestamp 'x' is not a whole number of milliseconds"),
        ("message_timestamp", 10**22, "is not a time between 1970 and the year 9999"),
        # Sent, then dead-lettered by every worker as no job id of pipeline's form.
        ("message_id", "order-17", "message_id 'order-17' is not a job id"),
        ("message_id", "", "message_id '' is not a job id"),
        ("options", None, "options None is not an object"),
        ("kwargs", [1], "kwargs [1] is not an object"),
    ],
)
def test_a_message_built_by_hand_with_a_field_no_worker_could_read_is_refused_at_send(purge, amqp, field, value, named):
    import dramatiq

    from pipeline.broker import build_broker
    from pipeline.errors import InvalidMessage
    from pipeline.settings import get_settings

    purge(DEFAULT_QUEUE)
    sender = build_broker(get_settings())
    fields = {"queue_name": DEFAULT_QUEUE, "actor_name": "ping", "args": (1,), "kwargs": {}, "options": {}}
    message = dramatiq.Message(**{**fields, field: value})
    with pytest.raises(InvalidMessage, match=re.escape(named)):
        sender.enqueue(message)
    if field != "message_id":
        assert AsyncResult(message.message_id).state is JobState.PENDING
    assert queue_depth(amqp, DEFAULT_QUEUE) == 0
    sender.close()


def test_dramatiq_callbacks_and_pipelines_run_with_a_record_for_every_step(worker, redis_client):
    import dramatiq

    followed = ping.send_with_options(args=(5,), on_success=sample_actors.note_outcome)
    failed = sample_actors.crashes.send_with_options(args=("no",), on_failure=sample_actors.note_outcome)
    outcome = sample_actors.RUNS_PREFIX + "outcome:"
    wait_until(lambda: redis_client.get(outcome + followed.message_id), timeout=20, what="the on_success callback")
    assert json.loads(redis_client.get(outcome + followed.message_id)) == {"pong": 5}
    wait_until(lambda: redis_client.get(outcome + failed.message_id), timeout=20, what="the on_failure callback")
    assert json.loads(redis_client.get(outcome + failed.message_id)) == {"type": "ValueError", "message": "no"}
    steps = dramatiq.pipeline([ping.message(1), ping.message(), ping.message()])
    steps.run()
    last = AsyncResult(steps.messages[-1].message_id)
    assert last.get(timeout=20) == {"pong": {"pong": {"pong": 1}}}
    assert [AsyncResult(m.message_id).state for m in steps.messages] == [JobState.SUCCESS] * 3


def test_a_delayed_message_in_the_delay_queue_waits_in_the_schedule_not_in_a_worker(worker, amqp, clean_redis):
    # Sent while Redis was away (or by another service, as Dramatiq sends one), a delayed
    # message reached the .DQ and a worker held it unacknowledged until its time: past
    # RabbitMQ's consumer_timeout the channel was closed and it came back, again and again; one
    # due past the year 9999 was held for ever.
    from dramatiq.common import current_millis

    def delayed(payload: str, eta: int):
        message = ping.message_with_options(args=(payload,))
        message = message.copy(queue_name=DEFAULT_QUEUE + ".DQ", options={"eta": eta})
        amqp.basic_publish("", DEFAULT_QUEUE + ".DQ", message.encode())
        return AsyncResult(message.message_id)

    now = current_millis()
    soon, later, never = delayed("soon", now + 2_000), delayed("later", now + 3_600_000), delayed("never", 10**20)
    assert soon.get(timeout=20) == {"pong": "soon"}
    assert wait_until(lambda: broker.schedule.count(DEFAULT_QUEUE) == 1, what="the later message in the schedule")
    assert later.state is JobState.PENDING
    error = never.get(timeout=20, propagate=False)
    assert "option eta 100000000000000000000 is larger than" in error["message"] and never.info()["attempt"] == 1
    broker.schedule.remove(DEFAULT_QUEUE, [later.id])
    assert "CRITICAL" not in worker.log


def test_a_message_in_its_queue_with_a_later_eta_waits_in_the_schedule_not_in_a_worker(worker, amqp, clean_redis):
    # Dramatiq holds any delivery with an ``eta`` until its time, one in the queue itself too
    # (published by another service, or moved back from a dead-letter queue in the management
    # UI): a worker held it unacknowledged past RabbitMQ's consumer_timeout, which delivered it
    # again, for ever.
    from dramatiq.common import current_millis

    message = ping.message_with_options(args=("later",))
    message = message.copy(options={"eta": current_millis() + 3_600_000})
    amqp.basic_publish("", DEFAULT_QUEUE, message.encode())
    assert wait_until(lambda: broker.schedule.count(DEFAULT_QUEUE) == 1, what="the later message in the schedule")
    now = ping.send("now")
    assert AsyncResult(now.message_id).get(timeout=20) == {"pong": "now"}
    broker.schedule.remove(DEFAULT_QUEUE, [message.message_id])
    assert "CRITICAL" not in worker.log


def test_an_eta_sent_as_an_option_is_a_delay(purge):
    # Dramatiq's own option for a delayed message's due time, set by a caller: the message went
    # to the queue itself, recorded QUEUED, for a worker to hold until then.
    from dramatiq.common import current_millis

    purge(DEFAULT_QUEUE)
    due = current_millis() + 60_000
    sent = ping.send_with_options(args=("later",), eta=due)
    record = AsyncResult(sent.message_id).info()
    assert record["state"] == "SCHEDULED"
    assert datetime.datetime.fromisoformat(record["eta"]) == datetime.datetime.fromtimestamp(due / 1000, datetime.UTC)
    assert broker.schedule.count(DEFAULT_QUEUE) == 1
    AsyncResult(sent.message_id).revoke()
    purge(DEFAULT_QUEUE)


def test_a_sent_message_is_queued_before_send_returns(purge):
    # No worker of this module consumes the slow queue: the record is the sender's.
    purge(SLOW_QUEUE)
    sent = sample_actors.record_order.send("held")
    record = AsyncResult(sent.message_id).info()
    assert record["state"] == "QUEUED"
    assert record["actor"] == "record_order" and record["queue"] == SLOW_QUEUE and record["priority"] == 0
    purge(SLOW_QUEUE)


def test_a_delayed_message_is_scheduled_with_its_due_time_before_send_returns(clean_redis):
    before = datetime.datetime.now(datetime.UTC)
    sent = broker.enqueue(ping.message_with_options(args=("held",)), delay=60_000)
    record = AsyncResult(sent.message_id).info()
    assert record["state"] == "SCHEDULED"
    due = datetime.datetime.fromisoformat(record["eta"])
    assert before + datetime.timedelta(seconds=59) < due < before + datetime.timedelta(seconds=62)
    AsyncResult(sent.message_id).revoke()


def test_unknown_id_is_pending_not_queued(clean_redis):
    result = AsyncResult(str(uuid.uuid4()))
    assert result.state is JobState.PENDING
    assert result.info() is None and not result.ready()


def test_success_record_holds_result_attempt_and_timestamps(worker):
    message = ping.send("x")
    result = AsyncResult(message.message_id)
    assert result.get(timeout=10) == {"pong": "x"}
    record = result.info()
    assert record["state"] == "SUCCESS" and record["attempt"] == 1
    assert record["actor"] == "ping" and record["queue"] == DEFAULT_QUEUE
    assert record["enqueued_at"] <= record["started_at"] <= record["finished_at"]
    assert result.ready() and result.successful() and not result.failed()


def test_transient_failure_is_retried_then_succeeds(worker, clean_redis):
    key = str(uuid.uuid4())
    result = AsyncResult(sample_actors.flaky.send(key, 1).message_id)
    retry = wait_for_state(result, JobState.RETRY)
    assert retry["attempt"] == 1
    assert retry["error"]["type"] == "ConnectionError"
    assert "fails on purpose" in retry["error"]["message"]
    assert retry["next_attempt_at"] > retry["started_at"]
    assert result.get(timeout=20) == 2
    assert result.info()["attempt"] == 2


def test_failure_after_retries_records_error_and_dead_letters(worker, amqp, clean_redis):
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    result = AsyncResult(sample_actors.unreachable.send("warehouse database unreachable").message_id)
    with pytest.raises(ConnectionError, match="warehouse database unreachable"):
        result.get(timeout=20)
    record = result.info()
    assert record["state"] == "FAILURE" and record["attempt"] == 2
    assert record["error"]["type"] == "ConnectionError"
    assert "raise ConnectionError(reason)" in record["error"]["traceback"]
    assert result.failed() and result.error["message"] == "warehouse database unreachable"
    assert result.result == record["error"]
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == 1, what="the message in the dead-letter queue")
    _, _, body = amqp.basic_get(DEFAULT_QUEUE + ".XQ", auto_ack=True)
    assert json.loads(body)["message_id"] == result.id


def test_celerys_status_and_traceback_read_the_record(worker, clean_redis):
    failed = AsyncResult(sample_actors.crashes.send("row 9: bad total").message_id)
    with pytest.raises(ValueError, match="row 9"):
        failed.get(timeout=20)
    assert failed.status is JobState.FAILURE
    assert "raise ValueError(reason)" in failed.traceback
    done = AsyncResult(ping.send(1).message_id)
    done.get(timeout=20)
    assert done.status is JobState.SUCCESS and done.traceback is None
    assert AsyncResult(str(uuid.uuid4())).traceback is None


def test_an_error_the_same_message_would_raise_again_fails_at_once(worker, clean_redis):
    result = AsyncResult(sample_actors.crashes.send("total 'abc' is not a number").message_id)
    with pytest.raises(ValueError, match="total 'abc' is not a number"):
        result.get(timeout=10)
    assert result.info()["attempt"] == 1


def test_permanent_error_fails_at_once_without_retry(worker, clean_redis):
    result = AsyncResult(sample_actors.refuses.send("row 3: bad email").message_id)
    with pytest.raises(PermanentError, match="row 3: bad email"):
        result.get(timeout=10)
    assert result.info()["attempt"] == 1


def test_get_without_propagate_returns_the_error(worker):
    result = AsyncResult(sample_actors.refuses.send("nope").message_id)
    error = result.get(timeout=10, propagate=False)
    assert error["type"] == "pipeline.errors.PermanentError" and error["message"] == "nope"


@pytest.mark.parametrize("kind", ["set", "circular", "deep", "huge"])
def test_a_result_no_record_can_hold_fails_the_job_at_once_saying_why(kind, worker):
    # Before, only a TypeError was caught: the others left the record STARTED, the job acked.
    result = AsyncResult(sample_actors.returns_what_json_cannot_hold.send(kind).message_id)
    error = result.get(timeout=10, propagate=False)
    assert result.info()["state"] == "FAILURE" and result.info()["attempt"] == 1
    assert error["message"].startswith("the result is not JSON-safe: "), error


def test_get_times_out_with_a_timeout_error(clean_redis):
    sent = broker.enqueue(ping.message_with_options(args=("later",)), delay=60_000)
    with pytest.raises(TimeoutError):
        AsyncResult(sent.message_id).get(timeout=0.2)
    with pytest.raises(JobTimeout, match="SCHEDULED"):
        AsyncResult(sent.message_id).get(timeout=0.1)
    AsyncResult(sent.message_id).revoke()


@pytest.mark.parametrize("timeout", [0.2, 2, 30])
def test_waits_with_a_short_timeout_reuse_connections_as_long_ones_do(timeout, clean_redis, monkeypatch):
    # A wait shorter than the socket timeout opened a connection of its own and closed it after:
    # a service polling with get(timeout=1) paid a connect and a handshake per call, and left a
    # closed socket behind each (TIME_WAIT) until the machine ran out of ports.
    handshakes = []
    handshake = redis.connection.AbstractConnection.on_connect_check_health

    def counted(self, *args, **kwargs):
        handshakes.append(self)
        return handshake(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "on_connect_check_health", counted)
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.SUCCESS, result=7, actor="ping", queue=DEFAULT_QUEUE)
    # Settings of its own: a client (and connections) of its own, none connected yet.
    result = AsyncResult(message_id, make_settings())
    assert result.get(timeout=timeout) == 7
    assert handshakes, "the first wait connects"
    connected = len(handshakes)
    for _ in range(50):
        assert result.get(timeout=timeout) == 7
    assert len(handshakes) == connected


@pytest.mark.parametrize("timeout", [math.nan, "5", True])
def test_get_refuses_a_timeout_that_is_not_a_number_of_seconds_at_once(timeout, clean_redis):
    # NaN compares false with every deadline: the wait never ended.
    message_id = str(uuid.uuid4())
    started = time.monotonic()
    with pytest.raises(InvalidTimeout, match="is not a number of seconds"):
        AsyncResult(message_id).get(timeout=timeout)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("timeout", [math.nan, "5", True])
def test_a_record_read_refuses_a_timeout_that_is_not_a_number_of_seconds(timeout, clean_redis):
    # "5" and True failed with a bare TypeError, NaN with ResultBackendUnavailable ("did not
    # answer within nan s"): the caller's mistake read as Redis failing.
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.SUCCESS, actor="ping", result={"pong": 1})
    with pytest.raises(InvalidTimeout, match="is not a number of seconds"):
        AsyncResult(message_id).info(timeout=timeout)


def test_a_record_read_with_an_infinite_timeout_waits_as_long_as_redis_may_take(clean_redis):
    # Infinity and 10**400 raised OverflowError from the wait for the answer.
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.SUCCESS, actor="ping", result={"pong": 1})
    # And so did a finite number past what a thread's wait takes (some 292 years): 1e12, 1e308.
    for timeout in (math.inf, 10**400, 1e308, 10**12):
        assert AsyncResult(message_id).info(timeout=timeout)["result"] == {"pong": 1}


def test_get_with_an_infinite_timeout_waits_as_long_as_it_takes(clean_redis):
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.SUCCESS, actor="ping", result={"pong": 1})
    assert AsyncResult(message_id).get(timeout=math.inf) == {"pong": 1}
    # Past a float's range: the deadline's sum raised OverflowError.
    assert AsyncResult(message_id).get(timeout=10**400) == {"pong": 1}
    assert AsyncResult(message_id).get(timeout=1e308) == {"pong": 1}
    with pytest.raises(JobTimeout):
        AsyncResult(str(uuid.uuid4())).get(timeout=-math.inf)
    # Past a float's range below zero: no time to wait, not an OverflowError.
    with pytest.raises(JobTimeout):
        AsyncResult(str(uuid.uuid4())).get(timeout=-(10**400))


def test_get_with_no_time_to_wait_looks_once(worker, clean_redis):
    sent = broker.enqueue(ping.message_with_options(args=("later",)), delay=60_000)
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="SCHEDULED"):
        AsyncResult(sent.message_id).get(timeout=0)
    assert time.monotonic() - started < 5
    AsyncResult(sent.message_id).revoke()
    finished = AsyncResult(ping.send("now").message_id)
    finished.get(timeout=10)
    assert finished.get(timeout=0) == {"pong": "now"}


def test_get_returns_within_milliseconds_of_the_end(worker):
    started = time.monotonic()
    for n in range(20):
        assert AsyncResult(ping.send(n).message_id).get(timeout=10) == {"pong": n}
    # Twenty round trips through RabbitMQ, a worker and Redis; a poll with sleeps would be far slower.
    assert time.monotonic() - started < 10


def test_revoked_before_start_is_skipped(worker, clean_redis):
    key = str(uuid.uuid4())
    message = sample_actors.count_runs.message(key)
    result = AsyncResult(message.message_id)
    # Revoked before the worker can take it: the message reaches the worker revoked.
    assert result.revoke()
    sent = broker.enqueue(message)
    with pytest.raises(JobRevoked):
        result.get(timeout=10)
    wait_until(lambda: any(sent.message_id in line for line in worker.lines if "was skipped" in line), what="the skip")
    assert runs(clean_redis, key) == 0
    assert result.state is JobState.REVOKED


def test_a_delayed_job_revoked_before_its_time_is_never_published(worker, clean_redis):
    key = str(uuid.uuid4())
    sent = broker.enqueue(sample_actors.count_runs.message(key), delay=1500)
    result = AsyncResult(sent.message_id)
    assert result.revoke()
    assert clean_redis.zscore(f"{result._store.keys.scheduled(DEFAULT_QUEUE)}", sent.message_id) is None
    time.sleep(2.5)
    assert runs(clean_redis, key) == 0
    assert not any(sent.message_id in line for line in worker.lines)
    assert result.state is JobState.REVOKED


def test_a_worker_started_after_the_revoke_skips_the_message(purge, start_worker, clean_redis):
    from pipeline.queues import SLOW_QUEUE

    purge(SLOW_QUEUE)
    revoked = sample_actors.record_order.send("revoked")
    assert AsyncResult(revoked.message_id).revoke()
    sample_actors.record_order.send("kept")
    start_worker([SLOW_QUEUE], threads=1)
    assert AsyncResult(sample_actors.record_order.send("last").message_id).get(timeout=20) == "last"
    assert clean_redis.lrange(sample_actors.ORDER_KEY, 0, -1) == ["kept", "last"]
    assert AsyncResult(revoked.message_id).state is JobState.REVOKED


def test_revoke_mid_run_stops_the_job(worker, clean_redis):
    key = str(uuid.uuid4())
    result = AsyncResult(sample_actors.steps.send(key, 100, 0.05).message_id)
    wait_until(lambda: result.progress and result.progress["done"] >= 3, what="three steps")
    assert result.revoke()
    done = settled(lambda: runs(clean_redis, key), what="the step count")
    assert 3 <= done < 100
    assert result.state is JobState.REVOKED


def test_progress_is_visible_while_running(worker, clean_redis):
    result = AsyncResult(sample_actors.steps.send(str(uuid.uuid4()), 5, 0.1).message_id)
    wait_for_state(result, JobState.STARTED)
    seen = wait_until(lambda: (result.info() or {}).get("progress") and result.info(), what="a progress report")
    assert seen["progress"]["total"] == 5 and seen["progress"]["phase"] == "stepping"
    assert result.get(timeout=10) == 5
    assert result.progress["done"] == 5


def test_progress_needs_a_running_job_or_an_id(clean_redis):
    with pytest.raises(Exception, match="no job is running"):
        report_progress(1)
    assert report_progress(1, message_id=str(uuid.uuid4())) is False


def test_a_progress_report_no_reader_could_show_fails_the_job_at_once_naming_it(worker, clean_redis):
    result = AsyncResult(sample_actors.reports.send("12", 40).message_id)
    with pytest.raises(PermanentError, match="report_progress done must be a number, not str '12'"):
        result.get(timeout=10)
    record = result.info()
    assert record["error"]["type"].endswith("InvalidProgress") and record["attempt"] == 1


def test_forget_removes_the_record(worker):
    result = AsyncResult(ping.send(1).message_id)
    result.get(timeout=10)
    assert result.forget()
    assert result.state is JobState.PENDING


def test_a_late_write_never_regresses_a_finished_record(worker):
    from pipeline.store.records import get_store

    message = ping.send(1)
    result = AsyncResult(message.message_id)
    result.get(timeout=10)
    store = get_store()
    assert store.write(message.message_id, JobState.STARTED, attempt=1) == (False, JobState.SUCCESS)
    assert store.write(message.message_id, JobState.QUEUED) == (False, JobState.SUCCESS)
    assert store.write(message.message_id, JobState.FAILURE, error={}) == (False, JobState.SUCCESS)
    assert store.update(message.message_id, progress={"done": 0}) is False
    assert not result.revoke()
    assert result.get(timeout=1) == {"pong": 1}


def test_a_redelivered_finished_message_is_not_run_again(purge, amqp, start_worker, clean_redis):
    from pipeline.queues import SLOW_QUEUE
    from pipeline.store.records import get_store

    purge(SLOW_QUEUE)
    message = sample_actors.record_order.send("finished-before")
    # A worker finished it and died before its ack reached RabbitMQ:
    get_store().write(message.message_id, JobState.STARTED, attempt=1)
    get_store().write(message.message_id, JobState.SUCCESS, result="finished-before")
    channel = amqp.connection.channel()
    method, _, _ = channel.basic_get(SLOW_QUEUE, auto_ack=False)
    assert method is not None
    channel.close()  # unacked: RabbitMQ requeues it, flagged redelivered
    sample_actors.record_order.send("after")
    start_worker([SLOW_QUEUE], threads=1)
    assert AsyncResult(sample_actors.record_order.send("last").message_id).get(timeout=20) == "last"
    assert clean_redis.lrange(sample_actors.ORDER_KEY, 0, -1) == ["after", "last"]
    assert AsyncResult(message.message_id).get(timeout=1) == "finished-before"


def test_records_expire_after_the_ttl(worker, clean_redis):
    from pipeline.settings import get_settings
    from pipeline.store.connection import get_redis

    message = ping.send(1)
    AsyncResult(message.message_id).get(timeout=10)
    ttl = clean_redis.ttl(get_redis().keys.record(message.message_id))
    assert 0 < ttl <= get_settings().result_ttl


def test_a_job_due_past_the_ttl_keeps_its_record_until_then_and_the_ttl_after(clean_redis):
    # The record expired a day after the send: a job due in three days read PENDING ("unknown
    # id, or expired") for two, and left the dashboard's lists.
    from pipeline.settings import get_settings
    from pipeline.store.claims import Claims
    from pipeline.store.connection import get_redis
    from pipeline.timestamps import iso_from_millis

    settings, keys = get_settings(), get_redis().keys
    hour = 3600
    sent = broker.enqueue(ping.message_with_options(args=("later",)), delay=(settings.result_ttl + hour) * 1000)
    assert clean_redis.ttl(keys.record(sent.message_id)) > settings.result_ttl + hour - 60
    assert AsyncResult(sent.message_id).state is JobState.SCHEDULED
    AsyncResult(sent.message_id).revoke()
    # So does one whose retry is due that late (a long backoff).
    retried = str(uuid.uuid4())
    due = iso_from_millis((time.time() + settings.result_ttl + hour) * 1000)
    get_store().write(retried, JobState.RETRY, attempt=1, actor="ping", next_attempt_at=due)
    assert clean_redis.ttl(keys.record(retried)) > settings.result_ttl + hour - 60
    # A claim lives until the longest backoff's retry has come.
    Claims(get_redis()).claim(retried)
    assert clean_redis.ttl(keys.claim(retried)) > settings.result_ttl + settings.retry_max_backoff / 1000 - 60


def test_an_expected_failure_is_one_warning_line_without_arguments(worker, clean_redis):
    secret = f"reset-token-{uuid.uuid4().hex}"
    result = AsyncResult(sample_actors.fails.send("row 3: bad email", secret).message_id)
    with pytest.raises(PermanentError):
        result.get(timeout=10)
    line = wait_until(lambda: [line for line in worker.lines if result.id in line and "failed" in line])
    assert len(line) == 1 and "WARNING" in line[0] and "row 3: bad email" in line[0] and "fails" in line[0]
    assert secret not in worker.log
    assert "Traceback" not in worker.log.split(result.id)[-1].split("\n[")[0]


def test_an_unexpected_failure_logs_its_traceback_once_without_arguments(worker, clean_redis):
    secret = f"reset-token-{uuid.uuid4().hex}"
    result = AsyncResult(sample_actors.fails.send("a bug", secret, permanent=False).message_id)
    with pytest.raises(ValueError, match="a bug"):
        result.get(timeout=10)
    wait_until(lambda: f"fails(job {result.id})" in worker.log, what="the failure in the log")
    assert worker.log.count(f"fails(job {result.id})") == 1
    assert "raise PermanentError(reason) if permanent else ValueError(reason)" in worker.log
    assert secret not in worker.log


def test_a_job_waiting_on_a_revoked_job_fails_with_that_error(worker, clean_redis):
    child = broker.enqueue(ping.message_with_options(args=("never",)), delay=60_000)
    assert AsyncResult(child.message_id).revoke()
    parent = AsyncResult(sample_actors.waits_for.send(child.message_id).message_id)
    with pytest.raises(JobRevoked, match=child.message_id):
        parent.get(timeout=10)
    record = parent.info()
    assert record["state"] == "FAILURE" and record["attempt"] == 1
    assert record["error"]["type"] == "pipeline.errors.JobRevoked"


def test_a_job_waiting_on_a_failed_job_fails_with_its_error(worker, clean_redis):
    child = AsyncResult(sample_actors.refuses.send("row 3: bad email").message_id)
    parent = AsyncResult(sample_actors.waits_for.send(child.id).message_id)
    with pytest.raises(PermanentError, match="row 3: bad email"):
        parent.get(timeout=10)
    assert parent.info()["attempt"] == 1


def test_a_message_published_again_after_its_job_finished_is_not_run_again(worker, amqp, clean_redis):
    key = str(uuid.uuid4())
    first = sample_actors.count_runs.send(key)
    assert AsyncResult(first.message_id).get(timeout=10) == 1
    # Another service publishes the same message again (not a redelivery: a new delivery).
    amqp.basic_publish("", DEFAULT_QUEUE, first.encode())
    wait_until(lambda: f"Job {first.message_id} (count_runs) is already SUCCESS" in worker.log, what="the skip")
    assert runs(clean_redis, key) == 1
    assert int(clean_redis.get(f"{testenv.NAMESPACE}:stats:duplicates")) >= 1


def test_a_copy_that_failed_never_hides_the_success_of_the_original(clean_redis):
    from pipeline.store.records import get_store

    store, job = get_store(), str(uuid.uuid4())
    store.write(job, JobState.STARTED, attempt=1)
    # A copy of the message (redelivered while the original still ran) fails first...
    assert store.write(job, JobState.FAILURE, error={"type": "X", "message": "copy"}) == (True, JobState.FAILURE)
    # ...then the original delivers: the record ends with what happened.
    assert store.write(job, JobState.SUCCESS, result="sent") == (True, JobState.SUCCESS)
    assert AsyncResult(job).get(timeout=1) == "sent"
    assert store.write(job, JobState.FAILURE, error={"type": "X", "message": "late"}) == (False, JobState.SUCCESS)
    revoked = str(uuid.uuid4())
    store.write(revoked, JobState.REVOKED)
    assert store.write(revoked, JobState.SUCCESS, result="late") == (False, JobState.REVOKED)

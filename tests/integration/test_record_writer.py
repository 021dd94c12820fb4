"""The process's Redis writer, on the real Redis and on one of the test's own that stops: every
thread's writes and reads go through it in order, each answer reaches its own command, and a
refusal is told to the write it belongs to."""

from __future__ import annotations

import random
import threading
import time
import uuid

import dramatiq
import pytest
import testenv
from testenv import make_settings
from waiting import settled, wait_until

from pipeline.errors import ResultBackendUnavailable
from pipeline.jobs.finished import ReceivedStates
from pipeline.jobs.recording import JobRecords
from pipeline.states import JobState
from pipeline.store.connection import RedisConnection
from pipeline.store.keys import Keys
from pipeline.store.records import RecordStore, get_store
from pipeline.store.writer import When

pytestmark = pytest.mark.integration


def stored_state(client, message_id: str) -> str | None:
    """The state field as Redis holds it, read past the store."""
    return client.hget(get_store().keys.record(message_id), "state")


def test_a_write_nobody_waits_for_is_made_though_its_thread_ends(clean_redis):
    message_id = str(uuid.uuid4())
    thread = threading.Thread(target=lambda: get_store().begin_write(message_id, JobState.QUEUED, actor="ping"))
    thread.start()
    thread.join(5)
    wait_until(lambda: stored_state(clean_redis, message_id) == '"QUEUED"', 2, "the write made")


def test_a_threads_own_read_sees_the_writes_it_handed_in(clean_redis):
    store = get_store()
    message_id = str(uuid.uuid4())
    store.begin_write(message_id, JobState.QUEUED, actor="ping")
    assert store.state(message_id) is JobState.QUEUED
    assert store.read(message_id)["actor"] == "ping"


def test_writes_handed_in_earlier_are_made_before_a_later_one_returns(clean_redis):
    store = get_store()
    earlier = [str(uuid.uuid4()) for _ in range(5)]
    for message_id in earlier:
        store.begin_write(message_id, JobState.QUEUED, actor="ping")
    store.write(str(uuid.uuid4()), JobState.QUEUED, actor="ping")
    assert [stored_state(clean_redis, message_id) for message_id in earlier] == ['"QUEUED"'] * 5


def test_a_write_redis_refuses_is_told_and_the_others_are_made(clean_redis):
    store = get_store()
    refused, made = str(uuid.uuid4()), str(uuid.uuid4())
    clean_redis.set(store.keys.record(refused), "not a hash")  # the write script answers WRONGTYPE
    told: list[ResultBackendUnavailable] = []
    store.begin_write(refused, JobState.QUEUED, on_lost=told.append, actor="ping")
    store.begin_write(made, JobState.QUEUED, on_lost=told.append, actor="ping")
    assert store.flush()
    assert len(told) == 1 and "WRONGTYPE" in str(told[0])
    assert stored_state(clean_redis, made) == '"QUEUED"'


def test_held_writes_handed_in_one_after_another_go_many_to_a_round_trip(clean_redis, monkeypatch):
    store = RecordStore(get_store().redis)
    batches: list[int] = []
    execute = store.writer._execute
    monkeypatch.setattr(store.writer, "_execute", lambda commands: batches.append(len(commands)) or execute(commands))
    ids = [str(uuid.uuid4()) for _ in range(2000)]
    for message_id in ids:
        store.begin_write(message_id, JobState.QUEUED, when=When.LATER, actor="ping")
        # What an unconfirmed send does between two writes: a publish, which lets go of the GIL.
        time.sleep(0.0001)
    assert store.flush()
    pipe = clean_redis.pipeline(transaction=False)
    for message_id in ids:
        pipe.hget(store.keys.record(message_id), "state")
    assert pipe.execute() == ['"QUEUED"'] * len(ids)
    # The writer's thread is not drawn into a round trip for each write or two: held writes
    # wait for their time together (about 20 to a batch here, fewer on a slower machine, whose
    # loop hands in fewer writes while one waits).
    assert len(batches) <= len(ids) // 10, batches


def test_held_reads_a_caller_sends_while_another_thread_sends_go_with_its_next_batch(private_redis, monkeypatch):
    from pipeline.store import writer

    # Held commands left to their time would wait half a minute: these must not.
    monkeypatch.setattr(writer, "HOLD_AT_MOST", 30.0)
    store = RecordStore(RedisConnection(make_settings(redis_url=private_redis.url, redis_socket_timeout=5.0)))
    first, asked = str(uuid.uuid4()), str(uuid.uuid4())
    store.write(asked, JobState.QUEUED, actor="ping")
    private_redis.freeze()
    try:
        # A worker thread's write, sent by it, waits on the frozen Redis while holding the writer.
        sending = threading.Thread(target=lambda: store.write(first, JobState.QUEUED, actor="ping"))
        sending.start()
        time.sleep(0.3)
        # As the consumer asks the states of a batch of deliveries: held, then sent at once by
        # their caller, who finds the other thread sending and leaves them to it.
        futures = [store.state_soon(asked, When.LATER), store.state_soon(first, When.LATER)]
        store.writer.send_waiting()
    finally:
        private_redis.thaw()
    sending.join(5)
    assert [future.result(timeout=3) for future in futures] == [JobState.QUEUED, JobState.QUEUED]


def test_a_kept_write_redis_refuses_waits_for_the_catch_up(clean_redis):
    store = RecordStore(get_store().redis)
    refused = str(uuid.uuid4())
    clean_redis.set(store.keys.record(refused), "not a hash")
    store.begin_write(refused, JobState.SUCCESS, attempt=1, keep=True, result=1)
    assert store.flush()
    assert store.kept == 1


def test_an_unconfirmed_send_of_unknown_outcome_reads_queued(clean_redis):
    # Without publisher confirms the QUEUED write follows the publish; a publish that broke
    # midway may still reach a worker, so its record must say the job may be queued.
    store = get_store(make_settings(confirm_delivery=False))
    message = dramatiq.Message(queue_name="default", actor_name="ping", args=(1,), kwargs={}, options={})
    JobRecords(store).after_enqueue_outcome_unknown(dramatiq.get_broker(), message)
    assert store.state(message.message_id) is JobState.QUEUED


def test_answers_are_matched_to_their_reads_whichever_thread_takes_them(clean_redis):
    store = get_store()
    ids = [str(uuid.uuid4()) for _ in range(6)]
    store.write(ids[0], JobState.QUEUED, actor="ping")
    store.write(ids[2], JobState.QUEUED, actor="ping")
    store.write(ids[2], JobState.SUCCESS, result=1)
    clean_redis.set(Keys(testenv.NAMESPACE).record(ids[4]), "not a hash")  # answers WRONGTYPE
    received = ReceivedStates(store)
    received.ask(ids)
    seen: dict[int, JobState | None] = {}
    # Taken out of order, from other threads: each gets its own answer.
    threads = [threading.Thread(target=lambda i=i: seen.__setitem__(i, received.take(ids[i]))) for i in (5, 2, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    seen |= {i: received.take(ids[i]) for i in (1, 3, 4)}
    assert [seen[i] for i in range(6)] == [
        JobState.QUEUED, JobState.PENDING, JobState.SUCCESS, JobState.PENDING, JobState.PENDING, JobState.PENDING
    ]  # fmt: skip
    assert received.take(ids[0]) is None  # each answer is taken once


def test_a_redis_that_went_away_leaves_states_unknown_and_a_new_connection_after(private_redis):
    store = RecordStore(RedisConnection(make_settings(redis_url=private_redis.url, redis_socket_timeout=1.0)))
    received = ReceivedStates(store)
    first = str(uuid.uuid4())
    received.ask([first])
    assert received.take(first) is JobState.PENDING
    private_redis.stop()
    gone = [str(uuid.uuid4()), str(uuid.uuid4())]
    received.ask(gone)
    assert [received.take(message_id) for message_id in gone] == [JobState.PENDING] * 2
    private_redis.start()
    message_id = str(uuid.uuid4())
    private_redis.client().hset(f"{testenv.NAMESPACE}:job:{message_id}", "state", '"STARTED"')
    received.ask([message_id])
    assert received.take(message_id) is JobState.STARTED


def test_an_answer_that_comes_too_late_never_reaches_a_later_command(private_redis):
    store = RecordStore(RedisConnection(make_settings(redis_url=private_redis.url, redis_socket_timeout=0.5)))
    asked, other = str(uuid.uuid4()), str(uuid.uuid4())
    store.write(asked, JobState.QUEUED, actor="ping")
    private_redis.freeze()
    try:
        # Sent, then given up on: Redis answers it once it is thawed.
        with pytest.raises(ResultBackendUnavailable):
            store.state(asked)
    finally:
        private_redis.thaw()
    # Read on the same connection, the late answer ("QUEUED") would be taken for this one.
    assert store.state(other) is JobState.PENDING
    assert store.state(asked) is JobState.QUEUED


@pytest.mark.alone  # 50,000 writes, each answered within its bound
def test_no_answer_ever_reaches_another_write_under_error_replies_from_many_threads(clean_redis):
    # 8 threads make 50,000 writes between them; about one record in twenty is a key of the
    # wrong type, so its writes are answered with an error. Each write must get its own
    # answer: the error for those records, and its own state for every other.
    store = get_store()
    keys = store.keys
    states = [JobState.QUEUED, JobState.STARTED, JobState.RETRY, JobState.SUCCESS, JobState.FAILURE]
    threads, writes_each = 8, 6_250
    chooser = random.Random(20)
    plans: list[list[tuple[str, JobState, bool]]] = []
    for _ in range(threads):
        plan = []
        for _ in range(writes_each):
            message_id, broken = str(uuid.uuid4()), chooser.random() < 0.05
            if broken:
                clean_redis.set(keys.record(message_id), "not a hash")
            plan.append((message_id, chooser.choice(states), broken))
        plans.append(plan)
    wrong: list[str] = []

    def run(plan: list[tuple[str, JobState, bool]]) -> None:
        futures = [(store.begin_write(m, s, attempt=1, actor="ping"), m, s, broken) for m, s, broken in plan]
        for future, message_id, state, broken in futures:
            try:
                applied, after = store.answer(future)
            except ResultBackendUnavailable as exc:
                if not broken or "WRONGTYPE" not in str(exc):
                    wrong.append(f"{message_id}: {exc}")
                continue
            if broken or not applied or after is not state:
                wrong.append(f"{message_id}: {state} answered {(applied, after)}")

    workers = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert wrong == []
    for plan in plans:
        for message_id, state, broken in chooser.sample(plan, 200):
            if not broken:
                assert stored_state(clean_redis, message_id) == f'"{state.value}"'


def ahead_store(private_redis) -> RecordStore:
    return RecordStore(RedisConnection(make_settings(redis_url=private_redis.url, redis_socket_timeout=3.0)))


def write_ahead(store: RecordStore, message_id: str):
    return store.begin_write(message_id, JobState.QUEUED, when=When.AHEAD, actor="ping")


def test_writes_sent_ahead_are_answered_on_kept_connections_reused_by_the_next(private_redis):
    store = ahead_store(private_redis)
    # One client of the test's own: a client made for each look would leave its connection in
    # the list for a moment after it is gone.
    admin = private_redis.client()

    def connections() -> set[str]:
        return {client["id"] for client in admin.client_list()}

    # No kept connection yet: the first writes go through the writer's thread, which opens one.
    # (Redis lists it once it is accepted, a moment before the writer has it ready: a write in
    # that moment would find none and have one more opened.)
    for _ in range(2):
        assert store.answer(write_ahead(store, str(uuid.uuid4())), wait=2) == (True, JobState.QUEUED)
    opened = settled(connections, quiet=0.5, what="the connections")
    assert len(opened) <= 5  # the test's, the pool's (the script loaded), the writer's batches, one or two kept
    for _ in range(50):
        message_id = str(uuid.uuid4())
        assert store.answer(write_ahead(store, message_id), wait=2) == (True, JobState.QUEUED)
        assert store.state(message_id) is JobState.QUEUED
    assert connections() == opened


def test_a_write_sent_ahead_to_a_frozen_redis_costs_no_wait_and_its_answer_the_callers_time(private_redis):
    store = ahead_store(private_redis)
    store.answer(write_ahead(store, str(uuid.uuid4())), wait=2)
    wait_until(lambda: len(private_redis.client().client_list()) >= 3, 2, "the kept connection opened")
    private_redis.freeze()
    try:
        for _ in range(3):
            started = time.monotonic()
            pending = write_ahead(store, str(uuid.uuid4()))
            assert time.monotonic() - started < 0.1
            with pytest.raises(ResultBackendUnavailable, match=r"did not answer within 0\.30 s"):
                store.answer(pending, wait=0.3)
            assert time.monotonic() - started < 1.0
    finally:
        private_redis.thaw()
    message_id = str(uuid.uuid4())
    assert store.answer(write_ahead(store, message_id), wait=2) == (True, JobState.QUEUED)


def test_a_write_sent_ahead_is_sent_again_after_a_restart_or_a_script_flush(private_redis):
    store = ahead_store(private_redis)
    store.answer(write_ahead(store, str(uuid.uuid4())), wait=2)
    wait_until(lambda: len(private_redis.client().client_list()) >= 3, 2, "the kept connection opened")
    private_redis.client().script_flush()
    message_id = str(uuid.uuid4())
    assert store.answer(write_ahead(store, message_id), wait=2) == (True, JobState.QUEUED)
    private_redis.stop()
    private_redis.start()
    for _ in range(3):
        message_id = str(uuid.uuid4())
        assert store.answer(write_ahead(store, message_id), wait=3) == (True, JobState.QUEUED)
        assert store.state(message_id) is JobState.QUEUED


def test_writes_in_flight_at_exit_are_answered_before_the_process_ends(private_redis):
    store = ahead_store(private_redis)
    assert store.answer(store.begin_write(str(uuid.uuid4()), JobState.QUEUED, actor="ping"), wait=2)[0]
    private_redis.freeze()
    thaw = threading.Timer(0.8, private_redis.thaw)
    try:
        futures = [
            store.begin_write(str(uuid.uuid4()), JobState.QUEUED, when=When.LATER, actor="ping") for _ in range(20)
        ]
        # Long past the hold: the writer's thread has taken them all and waits on Redis.
        time.sleep(0.5)
        assert not any(future.done() for future in futures)
        thaw.start()
        store.writer.settle(3.0)
        assert all(future.done() for future in futures)
        assert all(future.result() == (True, JobState.QUEUED) for future in futures)
    finally:
        thaw.cancel()
        private_redis.thaw()


def test_a_record_whose_actor_name_holds_a_lone_surrogate_is_written_and_indexed(clean_redis):
    # A raw message's actor name may hold one. The write script keys the index by the decoded
    # name, and Redis's JSON decoder refused the escape: the write failed after the record was
    # set, and the job was missing from the index by actor.
    message_id = str(uuid.uuid4())
    error = {"type": "ActorNotFound", "message": "no such actor"}
    applied, state = get_store().write(message_id, JobState.FAILURE, attempt=1, actor="scan\udcff", error=error)
    assert applied and state is JobState.FAILURE
    assert get_store().read(message_id)["actor"] == "scan\\udcff"
    assert [record["message_id"] for record in get_store().recent(actor="scan\\udcff")] == [message_id]
    # A name that is text but not ASCII is kept as it is.
    other = str(uuid.uuid4())
    get_store().write(other, JobState.QUEUED, actor="rechnung_prüfen")
    assert [record["message_id"] for record in get_store().recent(actor="rechnung_prüfen")] == [other]

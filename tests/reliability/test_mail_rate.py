"""One mail rate limit shared by every worker process, and a relay that throttles: four workers
held to 50 mails a second (and two of greenlets, as the default worker command runs), a password
reset that overtakes a newsletter, and 421 replies that slow every worker down while no mail
fails or goes out twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import pytest
from mail_support import WELCOME, mail_env
from relay_process import RelayProcess
from smtp import running_smtp_server
from waiting import wait_until

from pipeline.actors import send_email
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

# The tests that hold the relay's rate or a mail's wait to account run alone: other tests beside
# them would blur it. The relay whose clock counts runs in a process of its own, as a relay does
# (see relay_process).
pytestmark = pytest.mark.integration


def most_in_one_second(times: list[float]) -> int:
    """The most arrivals in any window of one second."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def script_calls(client) -> int:
    """The scripts a Redis has run by their digest so far (``EVALSHA``)."""
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def newsletter(count: int, tag: str):
    calls = [{"to": f"reader-{tag}-{n}@example.com", "template": "welcome", "context": WELCOME} for n in range(count)]
    return send_email.send_many(calls)


def held_to_50_a_second(relay: RelayProcess, mails: int) -> None:
    """Send ``mails`` newsletter mails to the workers started, held to 50 a second: the relay gets
    each once, at most 55 in any second, and no mail spent an attempt waiting for its slot.
    """
    sent = newsletter(mails, uuid.uuid4().hex[:8])
    relay.wait_for(mails, timeout=90)
    time.sleep(1)
    ids = Counter(relay.message_ids)
    assert len(ids) == mails and max(ids.values()) == 1 and len(relay.message_ids) == mails
    assert most_in_one_second(relay.arrival_times) <= 55
    seconds = relay.arrival_times[-1] - relay.arrival_times[0]
    assert seconds >= mails / 50 * 0.9
    for message in sent:
        record = AsyncResult(message.message_id).info()
        # Waiting for a slot spent no attempt (and no retry).
        assert record["state"] == JobState.SUCCESS and record["attempt"] == 1
    print(f"{mails} mails in {seconds:.1f} s; at most {most_in_one_second(relay.arrival_times)} in a second")


@pytest.mark.alone
def test_four_workers_send_1000_mails_at_50_a_second_each_once(purge, start_worker):
    purge(DEFAULT_QUEUE)
    with RelayProcess() as relay:
        env = {**mail_env(relay.port), "PIPELINE_MAIL_RATE_LIMIT": "50/s"}
        with ThreadPoolExecutor(4) as starting:
            list(starting.map(lambda _: start_worker([DEFAULT_QUEUE], threads=16, env=env), range(4)))
        held_to_50_a_second(relay, 1000)


@pytest.mark.alone
def test_two_greenlet_workers_of_the_default_command_hold_the_rate_and_send_each_mail_once(purge, start_worker):
    purge(DEFAULT_QUEUE)
    with RelayProcess() as relay:
        env = {**mail_env(relay.port), "PIPELINE_MAIL_RATE_LIMIT": "50/s", "PIPELINE_SMTP_MAX_CONNECTIONS": "100"}
        with ThreadPoolExecutor(2) as starting:
            list(starting.map(lambda _: start_worker([DEFAULT_QUEUE], threads=100, env=env, gevent=True), range(2)))
        held_to_50_a_second(relay, 400)


@pytest.mark.alone
def test_a_mail_whose_turn_is_far_waits_in_the_schedule_and_its_record_says_so(purge, start_worker):
    purge(DEFAULT_QUEUE)
    with RelayProcess() as relay:
        start_worker([DEFAULT_QUEUE], threads=8, env={**mail_env(relay.port), "PIPELINE_MAIL_RATE_LIMIT": "2/s"})
        sent = newsletter(12, uuid.uuid4().hex[:8])
        relay.wait_for(2, timeout=20)

        def waiting() -> list[dict]:
            return [r for r in (AsyncResult(m.message_id).info() for m in sent) if r.get("waiting_for")]

        # The mails that looked for their turn at once all hold a thread; the next to look, once
        # a thread is free, find theirs far and wait in the schedule.
        said = wait_until(waiting, 10, "a mail waiting in the schedule")
        assert all(r["waiting_for"] == "a slot of the mail rate limit (2/s)" and r["waiting_until"] for r in said)
        assert all(r["state"] == JobState.QUEUED for r in said)
        relay.wait_for(12, timeout=30)
        for message in sent:
            # The relay has the mail a moment before its worker writes the job's end.
            AsyncResult(message.message_id).get(timeout=10)
            record = AsyncResult(message.message_id).info()
            assert record["state"] == JobState.SUCCESS and record["attempt"] == 1 and "waiting_for" not in record
        assert sorted(Counter(relay.message_ids).values()) == [1] * 12
        assert most_in_one_second(relay.arrival_times) <= 2


@pytest.mark.alone
def test_a_password_reset_gets_the_next_slot_ahead_of_a_waiting_newsletter(purge, start_worker):
    purge(DEFAULT_QUEUE)
    with running_smtp_server() as server:
        inbox = server.handler
        env = {**mail_env(server.port), "PIPELINE_MAIL_RATE_LIMIT": "20/s"}
        for _ in range(2):
            start_worker([DEFAULT_QUEUE], threads=8, env=env)
        newsletter(300, uuid.uuid4().hex[:8])
        inbox.wait_for(40, timeout=30)
        reset = send_email.send(
            to="zoe@example.com",
            template="password_reset",
            context={"customer": {"name": "Zoë"}, "reset_url": "https://shop.example/reset/t0k3n", "valid_minutes": 30},
        )
        asked = time.monotonic()
        wait_until(lambda: any("zoe@example.com" in str(m["To"]) for m in inbox.mails), 20, "the reset")
        took = time.monotonic() - asked
        # 260 newsletter mails were still waiting: 13 s of slots at 20/s.
        assert took < 3.0, f"the reset took {took:.1f} s"
        assert len(inbox.mails) < 300
        assert AsyncResult(reset.message_id).get(timeout=5)["accepted"] == ["zoe@example.com"]


def test_a_relay_that_throttles_every_tenth_connection_slows_every_worker_and_loses_no_mail(purge, start_worker):
    purge(DEFAULT_QUEUE)
    with running_smtp_server() as server:
        inbox = server.handler
        inbox.throttle_every = 10
        env = {**mail_env(server.port), "PIPELINE_SMTP_REUSE_CONNECTION": "false"}
        workers = [start_worker([DEFAULT_QUEUE], threads=8, env=env) for _ in range(2)]
        sent = newsletter(60, uuid.uuid4().hex[:8])
        inbox.wait_for(60, timeout=90)
        for message in sent:
            assert AsyncResult(message.message_id).get(timeout=30)["accepted"]
        time.sleep(1)
        ids = Counter(str(mail["Message-ID"]) for mail in inbox.mails)
        assert len(ids) == 60 and max(ids.values()) == 1
        assert inbox.throttled >= 5
        log = "".join(worker.log for worker in workers)
        assert "The relay throttled job" in log and "every worker's mail pauses" in log


@pytest.mark.alone
def test_without_a_limit_a_worker_sees_another_workers_pause_at_little_cost(private_redis):
    from testenv import make_settings

    from pipeline.jobs.mail_rate import PAUSE_KNOWN_FOR, MailRateLimit
    from pipeline.store.connection import RedisConnection
    from pipeline.store.records import RecordStore

    # A Redis of the test's own: its script calls are this test's alone.
    settings = make_settings(redis_url=private_redis.url)
    store = RecordStore(RedisConnection(settings))
    limit = MailRateLimit(settings, store)
    assert limit.rate.limit == 0
    client = private_redis.client()
    before = script_calls(client)
    started = time.monotonic()
    looks = 0
    while time.monotonic() - started < 0.5:
        assert limit._look(str(uuid.uuid4()), 0) == 0.0
        looks += 1
    assert looks > 100 and script_calls(client) - before <= 0.5 / PAUSE_KNOWN_FOR + 2
    other = MailRateLimit(settings, store)  # another worker, throttled by the relay
    other.rate.pause()
    time.sleep(PAUSE_KNOWN_FOR)
    assert limit._look(str(uuid.uuid4()), 0) > 1.0


def test_a_freed_slot_wakes_one_waiting_mail_not_all_of_them(private_redis):
    from testenv import make_settings

    from pipeline.jobs.mail_rate import MailRateLimit
    from pipeline.store.connection import RedisConnection
    from pipeline.store.records import RecordStore

    # A Redis of the test's own: its script calls are this test's alone.
    settings = make_settings(redis_url=private_redis.url, mail_rate_limit="50/s")
    limit = MailRateLimit(settings, RecordStore(RedisConnection(settings)))
    client = private_redis.client()
    limit.pace(str(uuid.uuid4()))  # loads the script
    taken: list[float] = []
    before = script_calls(client)
    mails = 40

    def send_one(_: int) -> None:
        limit.pace(str(uuid.uuid4()))
        taken.append(time.monotonic())

    with ThreadPoolExecutor(mails) as senders:
        list(senders.map(send_one, range(mails)))
    asks = script_calls(client) - before
    # A waiting mail is told when its own turn comes and asks again then: about twice per mail.
    # Were every waiter woken by each slot that frees, 40 waiters would ask 18 times per mail.
    assert asks <= 4 * mails, f"{asks} asks for {mails} mails"
    # Still one slot every 20 ms.
    assert max(taken) - min(taken) >= (mails - 1) / 50 * 0.9


def rate_limited_on_stub(private_redis, rate: str):
    """The rate limit's middleware for a ``rate_limited`` actor on Dramatiq's StubBroker, with
    the records in a Redis of the test's own."""
    from dramatiq.brokers.stub import StubBroker
    from testenv import make_settings

    from pipeline.jobs.mail_rate import MailRateLimit
    from pipeline.store.connection import RedisConnection
    from pipeline.store.records import RecordStore

    settings = make_settings(redis_url=private_redis.url, mail_rate_limit=rate)
    limit = MailRateLimit(settings, RecordStore(RedisConnection(settings)))
    broker = StubBroker(middleware=[limit])
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="mail", rate_limited=True)
    return limit, broker, actor


@pytest.mark.alone
def test_a_burst_that_looks_at_once_waits_in_the_schedule_not_on_its_connections(private_redis):
    from dramatiq.broker import MessageProxy
    from dramatiq.middleware import SkipMessage

    limit, broker, actor = rate_limited_on_stub(private_redis, "20/s")
    mails = 60
    messages = [MessageProxy(actor.message()) for _ in range(mails)]
    start = threading.Barrier(mails)
    held: list[float] = []
    later: list[str] = []

    def start_job(message) -> None:
        start.wait()
        try:
            limit.before_process_message(broker, message)
        except SkipMessage:
            later.append(message.message_id)
            return
        # What the mailer does once the relay took the envelope: the connection is open from here.
        opened = time.monotonic()
        limit.pace(message.message_id)
        held.append(time.monotonic() - opened)
        limit.after_process_message(broker, message)

    with ThreadPoolExecutor(mails) as jobs:
        list(jobs.map(start_job, messages))
    # About one second of slots at 20 a second passed their look; the rest wait in the schedule.
    assert 15 <= len(held) <= 25 and len(held) + len(later) == mails
    assert broker.queues["default.DQ"].qsize() == len(later)
    # Each passed mail waited for its turn before its connection: what the connection waits is the
    # drift between a turn and its slot, not the turns of the mails that looked with it (one mail
    # would wait three seconds were they all let through).
    assert max(held) < 0.5, sorted(held)[-5:]


def test_a_job_that_passed_its_look_and_sends_nothing_gives_its_turn_up(private_redis):
    from dramatiq.broker import MessageProxy

    limit, broker, actor = rate_limited_on_stub(private_redis, "2/s")
    first, second, third = (MessageProxy(actor.message()) for _ in range(3))
    limit.before_process_message(broker, first)
    # The second mail's turn comes one slot (540 ms) after the first's, which passed its look.
    assert 0.4 < limit._look(second.message_id, 0) < 0.8
    # The first job fails before its mail (or an earlier attempt had sent it): its turn is free,
    # and the third mail's comes after the second's alone, not two slots away.
    limit.after_process_message(broker, first, exception=ValueError("bad context"))
    assert 0.4 < limit._look(third.message_id, 0) < 0.8


@pytest.mark.alone
def test_a_mail_sent_back_to_the_schedule_comes_back_once_when_its_turn_is_near(private_redis):
    from dramatiq.broker import MessageProxy
    from dramatiq.middleware import SkipMessage

    from pipeline.jobs.options import RATE_WAIT_OPTION

    limit, broker, actor = rate_limited_on_stub(private_redis, "40/s")
    mails = 120
    start = threading.Barrier(mails)
    sent_back: Counter[str] = Counter()
    taken: list[float] = []

    def run_job(message) -> None:
        # A worker's part: the job starts; sent back, it comes back when due, as the schedule
        # publishes it.
        start.wait()
        while True:
            try:
                limit.before_process_message(broker, MessageProxy(message))
            except SkipMessage:
                sent_back[message.message_id] += 1
                time.sleep(max(0.0, message.options[RATE_WAIT_OPTION] / 1000 - time.time()))
                continue
            limit.pace(message.message_id)
            taken.append(time.monotonic())
            limit.after_process_message(broker, MessageProxy(message))
            return

    with ThreadPoolExecutor(mails) as jobs:
        list(jobs.map(run_job, [actor.message() for _ in range(mails)]))
    assert len(taken) == mails
    # About a second of slots passed at once; every other mail went back once, to come back when
    # its own turn was near, not with all the others to look again (which would send the last
    # of them back three times).
    assert mails - 50 <= sum(sent_back.values()) <= mails - 30 and max(sent_back.values()) == 1, sent_back
    # Still one slot every 27 ms: 120 mails in about three seconds.
    assert max(taken) - min(taken) >= (mails - 1) / 40 * 0.9


def test_a_password_reset_looks_past_the_newsletter_mails_that_passed_their_look(private_redis):
    from dramatiq.broker import MessageProxy

    limit, _, actor = rate_limited_on_stub(private_redis, "10/s")
    newsletter_turns = [limit._look(MessageProxy(actor.message()).message_id, 0) for _ in range(9)]
    # Nine newsletter mails passed, their turns a slot (108 ms) apart over the next second.
    assert newsletter_turns[0] == 0.0 and 0.8 < newsletter_turns[-1] <= 1.0
    # A password reset is not behind them: it asks for the next slot, which goes to it.
    assert limit._look(MessageProxy(actor.message()).message_id, 5) < 0.15
    # Another newsletter mail is behind all of them.
    assert limit._look(MessageProxy(actor.message()).message_id, 0) > 0.9

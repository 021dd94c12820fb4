"""Acks handed to the consumer's thread together, against the installed Dramatiq and pika and the
real RabbitMQ: the jobs that finish before the consumer's thread runs take one wake-up between
them, and every ack reaches RabbitMQ. It fails when a release changes the members used."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pika
import pytest

from pipeline.jobs.acks import AcksTogether
from pipeline.queues import DEFAULT_QUEUE

pytestmark = pytest.mark.integration


def received(consumer, count: int) -> list:
    messages = []
    while len(messages) < count:
        message = next(consumer)
        if message is not None:
            messages.append(message)
    return messages


def counting(call: Callable[[object], object]) -> tuple[list[object], Callable[[object], None]]:
    """``call``, noting each callback it is given; and the list of them."""
    calls: list[object] = []

    def counted(callback: object) -> None:
        calls.append(callback)
        call(callback)

    return calls, counted


def ack_from_threads(consumer, messages: list) -> None:
    """Acknowledge each message from a thread of its own, as worker threads do."""
    threads = [threading.Thread(target=consumer.ack, args=(m,)) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)


def test_acks_from_many_threads_take_one_wake_up_and_all_reach_rabbitmq(purge):
    from pipeline.actors import ping
    from pipeline.broker import broker

    purge(DEFAULT_QUEUE)
    for n in range(20):
        ping.send(n)
    consumer = broker.consume(DEFAULT_QUEUE, prefetch=20, timeout=200)
    together = consumer.inner
    assert isinstance(together, AcksTogether)
    calls, counted = counting(together.connection.add_callback_threadsafe)
    try:
        messages = received(consumer, 20)
        together._call_soon = counted
        ack_from_threads(consumer, messages)
        assert len(calls) == 1  # the consumer's thread has not run since the first ack
        next(consumer)  # its loop runs the callback: every ack goes out
    finally:
        consumer.close()
    # A message left unacknowledged would be back in the queue once the consumer closed.
    assert broker.channel.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count == 0


def test_a_batch_of_acks_wakes_the_consumers_thread_once_not_once_more_for_each_ack(purge):
    from pipeline.actors import ping
    from pipeline.broker import broker

    purge(DEFAULT_QUEUE)
    for n in range(5):
        ping.send(n)
    consumer = broker.consume(DEFAULT_QUEUE, prefetch=5, timeout=200)
    # pika's own connection, under whatever pipeline wraps it in: each call wakes its thread.
    connection = consumer.inner.connection
    while not isinstance(connection, pika.BlockingConnection):
        connection = connection.connection
    wake_ups, connection.add_callback_threadsafe = counting(connection.add_callback_threadsafe)
    try:
        ack_from_threads(consumer, received(consumer, 5))
        next(consumer)  # its loop runs the batch: every ack goes out
        assert len(wake_ups) == 1
        # Once the connection's thread is known, an ack made on it wakes nothing.
        ping.send(5)
        (last,) = received(consumer, 1)
        consumer.ack(last)
        next(consumer)
        assert len(wake_ups) == 1
    finally:
        consumer.close()
    assert broker.channel.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count == 0


def test_the_installed_dramatiq_consumer_has_the_connection_the_acks_use(purge):
    from pipeline.broker import broker

    purge(DEFAULT_QUEUE)
    consumer = broker.consume(DEFAULT_QUEUE, prefetch=1, timeout=100)
    try:
        assert callable(getattr(consumer.inner.connection, "add_callback_threadsafe", None))
        assert consumer.inner._call_soon is not None
    finally:
        consumer.close()


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_an_ack_or_a_rejection_waits_for_its_jobs_final_write_that_another_thread_is_still_to_send(purge, outcome):
    from dramatiq.broker import MessageProxy
    from waiting import wait_until

    from pipeline.actors import ping
    from pipeline.broker import broker
    from pipeline.jobs.recording import JobRecords
    from pipeline.states import JobState
    from pipeline.store.records import get_store

    purge(DEFAULT_QUEUE)
    message = ping.send(1)
    consumer = broker.consume(DEFAULT_QUEUE, prefetch=1, timeout=200)
    together = consumer.inner
    records = next(m for m in broker.middleware if isinstance(m, JobRecords))
    store = get_store()
    done: list[str] = []
    settle = "nack" if outcome == "failure" else "ack"
    inner_settle = getattr(together.inner, settle)
    setattr(together.inner, settle, lambda m: done.append(m.message_id) or inner_settle(m))
    final = '"FAILURE"' if outcome == "failure" else '"SUCCESS"'
    try:
        (delivered,) = received(consumer, 1)
        assert isinstance(delivered, MessageProxy) and delivered.message_id == message.message_id
        # Another thread is sending a batch: the job's final write waits for its next one.
        with store.writer._sending:
            if outcome == "failure":
                delivered.fail()
                records.after_process_message(broker, delivered, exception=ValueError("no"))
            else:
                records.after_process_message(broker, delivered, result={"pong": 1})
            getattr(together, settle)(delivered)
            next(consumer)  # the consumer's loop runs: it sends the acks handed to it
            # Read past the writer, whose sending this test holds.
            assert done == [] and store.client.hget(store.keys.record(message.message_id), "state") != final
        # That thread goes on with what waits: the write is made, then the message settled.
        store.writer.send_waiting()
        assert store.state(message.message_id) is JobState(final.strip('"'))
        wait_until(lambda: next(consumer) is None and done == [message.message_id], 5, f"the {settle}")
    finally:
        consumer.close()
        broker.channel.queue_purge(f"{DEFAULT_QUEUE}.XQ")
    assert broker.channel.queue_declare(DEFAULT_QUEUE, passive=True).method.message_count == 0

"""An actor another service declares with pipeline's decorator, in a module outside pipeline, on
a queue pipeline does not know: it gets records, ``AsyncResult``, retries of only what can pass,
and the start-up checks of its long time limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cli_runner import run_cli
from invoice_actors import INVOICE_QUEUE, send_invoice
from services import queue_depth
from waiting import wait_until

from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration


@pytest.fixture
def invoice_worker(purge, start_worker, clean_redis):
    purge(INVOICE_QUEUE)
    yield start_worker([INVOICE_QUEUE], threads=2, modules=["pipeline.actors", "invoice_actors"])
    purge(INVOICE_QUEUE)


def test_its_jobs_get_records_and_results(invoice_worker):
    result = AsyncResult(send_invoice.send(1001).message_id)
    assert result.get(timeout=20) == {"invoice": 1001, "runs": 1}
    record = result.info()
    assert record["actor"] == "send_invoice" and record["queue"] == INVOICE_QUEUE and record["attempt"] == 1


def test_a_passing_failure_is_retried_and_a_lasting_one_fails_at_once(invoice_worker):
    busy = AsyncResult(send_invoice.send(1002, fail="busy-once").message_id)
    bad = AsyncResult(send_invoice.send(1003, fail="bad-number").message_id)
    assert busy.get(timeout=20) == {"invoice": 1002, "runs": 2}
    assert busy.info()["attempt"] == 2
    with pytest.raises(ValueError, match="invoice 1003 does not exist"):
        bad.get(timeout=20)
    assert bad.info()["attempt"] == 1 and bad.info()["state"] == "FAILURE"


def test_its_long_time_limit_is_warned_of_and_its_prefetch_lowered(invoice_worker):
    wait_until(
        lambda: f"Queue '{INVOICE_QUEUE}': a worker may hold a delivery 2700000 ms" in invoice_worker.log,
        what="the consumer-timeout warning for the actor's time limit",
    )
    assert "lower the actor's time_limit" in invoice_worker.log


def test_a_prefetch_the_operator_set_past_the_timeout_is_warned_of_by_its_name(purge, start_worker):
    purge(INVOICE_QUEUE)
    env = {"dramatiq_queue_prefetch": "8"}
    worker = start_worker([INVOICE_QUEUE], threads=2, env=env, modules=["pipeline.actors", "invoice_actors"])
    wait_until(
        lambda: f"dramatiq_queue_prefetch=8 with 2 threads lets a message of '{INVOICE_QUEUE}' wait" in worker.log,
        what="the prefetch warning naming the setting",
    )
    assert "set dramatiq_queue_prefetch to 2 or less" in worker.log


def test_its_queue_and_dead_letters_are_seen_by_the_operator_s_commands(invoice_worker, amqp):
    bad = AsyncResult(send_invoice.send(1004, fail="bad-number").message_id)
    with pytest.raises(ValueError, match="invoice 1004 does not exist"):
        bad.get(timeout=20)
    dead_letters = INVOICE_QUEUE + ".XQ"
    wait_until(lambda: queue_depth(amqp, dead_letters) >= 1, what="the invoice dead-lettered")
    listed = run_cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"message_id": bad.id, "queue": dead_letters} in [
        {"message_id": row["message_id"], "queue": row["queue"]} for row in json.loads(listed.stdout)
    ]
    shown = run_cli("queues", "--json")
    assert {INVOICE_QUEUE, dead_letters} <= {row["queue"] for row in json.loads(shown.stdout)["queues"]}
    purged = run_cli("dlq", "purge", INVOICE_QUEUE, "--json")
    assert purged.returncode == 0 and json.loads(purged.stdout)["purged"] >= 1, purged.stderr
    assert queue_depth(amqp, dead_letters) == 0


@pytest.fixture
def on_server():
    """What RabbitMQ says of a queue: its passive declare's answer, None when it does not exist
    (asked without the management API's lag); and a channel to change it with.
    """
    import pika
    import testenv

    connection = pika.BlockingConnection(pika.URLParameters(testenv.BROKER_URL))

    def queue(name: str) -> Any:
        try:
            return connection.channel().queue_declare(name, passive=True).method
        except pika.exceptions.ChannelClosedByBroker:
            return None

    queue.channel = connection.channel  # type: ignore[attr-defined]
    yield queue
    connection.close()


def test_a_worker_whose_queue_an_operator_deleted_declares_it_again_and_goes_on(invoice_worker, on_server):
    # The consumer, cancelled as its queue went, found none when it started again and logged a
    # CRITICAL traceback; only its next start, three seconds on, declared the queue. A worker
    # that serves a queue declares it each time it starts to consume, as it did at boot.
    def consumers() -> int | None:
        """The queue's consumers, None when it does not exist."""
        found = on_server(INVOICE_QUEUE)
        return None if found is None else found.consumer_count

    wait_until(consumers, what="the worker consuming")
    on_server.channel().queue_delete(INVOICE_QUEUE)
    assert consumers() is None
    wait_until(consumers, timeout=15, what="the deleted queue declared again and consumed by its worker")
    result = AsyncResult(send_invoice.send(1004).message_id)
    assert result.get(timeout=20) == {"invoice": 1004, "runs": 1}
    assert "CRITICAL" not in invoice_worker.log


def test_a_job_failing_after_an_operator_deleted_its_dead_letter_queue_is_dead_lettered(invoice_worker, on_server):
    # RabbitMQ drops a rejected message whose dead-letter queue does not exist, without a word:
    # the worker declares the .XQ again as it rejects.
    dead_letters = INVOICE_QUEUE + ".XQ"

    def depth() -> int | None:
        """Messages in the dead-letter queue, None when it does not exist."""
        found = on_server(dead_letters)
        return None if found is None else found.message_count

    assert AsyncResult(send_invoice.send(1005).message_id).get(timeout=20)["runs"] == 1
    on_server.channel().queue_delete(dead_letters)
    assert depth() is None
    for invoice in (1006, 1007):
        bad = AsyncResult(send_invoice.send(invoice, fail="bad-number").message_id)
        with pytest.raises(ValueError, match=f"invoice {invoice} does not exist"):
            bad.get(timeout=20)
    wait_until(lambda: depth() == 2, timeout=10, what="both failed jobs in the dead-letter queue")
    assert "CRITICAL" not in invoice_worker.log

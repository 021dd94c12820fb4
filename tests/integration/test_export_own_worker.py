"""Export jobs that need a worker of their own: another plug-in, a killed worker, a notify mail."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from export_support import export_env, finished_files, make_folders
from services import ROOT, queue_depth
from waiting import wait_until

from pipeline.actors import export_orders
from pipeline.errors import JobFailed, PermanentError
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration


@pytest.fixture
def folders(tmp_path):
    return make_folders(tmp_path)


def test_a_broken_plugin_fails_naming_the_dotted_path(purge, start_worker, folders):
    purge(SLOW_QUEUE)
    start_worker([SLOW_QUEUE], env={**export_env(*folders), "PIPELINE_ORDER_SOURCE": "myshop.exports:iter_orders"})
    result = AsyncResult(export_orders.send(filter={}).message_id)
    with pytest.raises(PermanentError, match=r"'myshop\.exports:iter_orders': importing 'myshop\.exports' failed"):
        result.get(timeout=30)
    assert result.info()["attempt"] == 1


@pytest.mark.lasts(11)
def test_a_worker_killed_mid_export_is_redelivered_and_makes_one_file(purge, start_worker, folders):
    purge(SLOW_QUEUE)
    first = start_worker([SLOW_QUEUE], threads=1, env=export_env(*folders))
    result = AsyncResult(export_orders.send(filter={"count": 4000, "pause": 0.001}, name="killed").message_id)
    wait_until(lambda: result.progress and result.progress["done"] >= 500, 20, "500 orders written")
    first.kill()
    assert result.state is JobState.STARTED
    parts = [p for p in folders[0].iterdir()] if folders[0].exists() else []
    # Nothing under a final name: the killed attempt's half file, and its scratch folder.
    assert all(p.name.endswith(".part") or p.name == ".scratch" for p in parts)
    start_worker([SLOW_QUEUE], threads=1, env=export_env(*folders))
    pointer = result.get(timeout=60)
    assert pointer["rows"]["Orders"] == 4000
    # The new run removed what the killed one left: its half file and its scratch folder.
    assert finished_files(folders[0]) == [pointer["file_name"]]


def test_an_export_stopped_by_its_workers_shutdown_says_how_far_it_got_and_why(purge, start_worker, folders):
    purge(SLOW_QUEUE)
    env = {**export_env(*folders), "PIPELINE_SHUTDOWN_GRACE": "5"}
    worker = start_worker([SLOW_QUEUE], threads=1, env=env)
    result = AsyncResult(export_orders.send(filter={"count": 100_000, "pause": 0.0002}, name="stopped").message_id)
    wait_until(lambda: result.progress and result.progress["done"] >= 200, 20, "200 orders written")
    worker.stop()
    record = result.info()
    assert record["state"] == JobState.INTERRUPTED
    assert re.fullmatch(r"export stopped after \d+ orders: its worker is shutting down", record["interrupted"])
    assert finished_files(folders[0]) == []


def test_notify_mails_the_link_once_the_file_is_there(purge, start_worker, smtp_server, folders):
    inbox, port = smtp_server
    purge(SLOW_QUEUE)
    purge(DEFAULT_QUEUE)
    env = {
        **export_env(*folders),
        "PIPELINE_SMTP_PORT": str(port),
        "PIPELINE_EXPORT_BASE_URL": "https://files.example/x",
    }
    start_worker([SLOW_QUEUE, DEFAULT_QUEUE], threads=2, env=env)
    export_job = AsyncResult(export_orders.send(filter={"count": 12}, notify="boss@example.com").message_id)
    pointer = export_job.get(timeout=30)
    mail_result = AsyncResult(pointer["notified"]["message_id"]).get(timeout=30)
    (mail,) = inbox.wait_for(1)
    assert mail_result["accepted"] == ["boss@example.com"]
    text = mail.get_body(("plain",)).get_content()
    assert pointer["url"] in text and pointer["url"].startswith("https://files.example/x/") and "12 orders" in text
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", export_job.id], cwd=ROOT, capture_output=True, text=True
    )
    assert f"notified  boss@example.com: mail job {pointer['notified']['message_id']} SUCCESS" in out.stdout


def test_an_export_that_runs_out_of_time_fails_without_retry(purge, start_worker, folders, amqp):
    purge(SLOW_QUEUE)
    start_worker([SLOW_QUEUE], threads=1, env={**export_env(*folders), "PIPELINE_EXPORT_TIME_LIMIT": "1"})
    result = AsyncResult(export_orders.send(filter={"count": 100_000, "pause": 0.001}).message_id)
    with pytest.raises(JobFailed, match="TimeLimitExceeded"):
        result.get(timeout=30)
    record = result.info()
    assert record["state"] == "FAILURE" and record["attempt"] == 1
    assert record["error"]["type"].endswith("TimeLimitExceeded")
    wait_until(lambda: queue_depth(amqp, SLOW_QUEUE + ".XQ") == 1, what="the export in the dead-letter queue")
    assert not [name for name in finished_files(folders[0]) if name.endswith(".xlsx")]


def test_a_slow_worker_holds_one_message_per_thread(purge, start_worker, folders, amqp):
    purge(SLOW_QUEUE)
    start_worker([SLOW_QUEUE], threads=1, env=export_env(*folders))
    first = AsyncResult(export_orders.send(filter={"count": 2000, "pause": 0.001}).message_id)
    later = [AsyncResult(export_orders.send(filter={"count": n}).message_id) for n in (1, 2)]
    wait_until(lambda: first.state is JobState.STARTED, what="the first export running")
    # The two others wait in RabbitMQ (where priority and other workers can still reach them),
    # not in the worker's memory behind the running export.
    assert queue_depth(amqp, SLOW_QUEUE) == 2
    assert [r.get(timeout=30)["rows"]["Orders"] for r in (first, *later)] == [2000, 1, 2]


def test_an_export_run_twice_at_once_mails_its_link_once(purge, start_worker, smtp_server, folders, amqp):
    inbox, port = smtp_server
    purge(SLOW_QUEUE)
    purge(DEFAULT_QUEUE)
    start_worker([SLOW_QUEUE, DEFAULT_QUEUE], threads=3, env={**export_env(*folders), "PIPELINE_SMTP_PORT": str(port)})
    message = export_orders.send(filter={"count": 150, "pause": 0.01}, notify="boss@example.com")
    # The same message again while the first runs, as RabbitMQ delivers it when it took the
    # first worker for dead: two runs at once.
    amqp.basic_publish("", SLOW_QUEUE, message.encode())
    pointer = AsyncResult(message.message_id).get(timeout=30)
    AsyncResult(pointer["notified"]["message_id"]).get(timeout=30)
    # The other run ends a moment later (later still on a loaded machine), its scratch removed,
    # and leaves no file.
    scratch = folders[0] / ".scratch"
    wait_until(lambda: not any(scratch.glob("*")), 20, "both runs ended")
    time.sleep(0.5)
    assert [mail["To"] for mail in inbox.mails] == ["boss@example.com"]
    assert finished_files(folders[0]) == [pointer["file_name"]]

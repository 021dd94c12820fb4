"""The operator's commands (send, follow, queues, dead letters, doctor) as subprocesses against
the real services: output, JSON and exit statuses."""

from __future__ import annotations

import json
import os
import sys
import uuid

import dramatiq
import pika
import pytest
from cli_runner import run_cli
from export_support import export_env, make_folders
from mail_support import WELCOME, mail_env
from sample_source import make_order
from services import WorkerProcess, flush_queue, queue_depth
from smtp import running_smtp_server
from waiting import wait_until

from pipeline.cli import RET_BAD_ID, RET_ERROR, RET_FAILED, RET_OK, RET_UNKNOWN
from pipeline.dead_letters import DEFAULT_LIMIT
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operated(amqp, redis_client, tmp_path_factory):
    """A worker on both queues with an SMTP server and export folders; the environment the
    commands run with."""
    exports, imports = make_folders(tmp_path_factory.mktemp("operator"))
    with running_smtp_server() as smtp:
        for queue in (DEFAULT_QUEUE, SLOW_QUEUE):
            flush_queue(queue)
        env = {**export_env(exports, imports), **mail_env(smtp.port)}
        worker = WorkerProcess([DEFAULT_QUEUE, SLOW_QUEUE], 2, env, ["pipeline.actors", "sample_actors"])
        yield env, imports, smtp.handler
        worker.discard()


def test_export_with_wait_follows_the_job_and_prints_the_file(operated):
    env, imports, _ = operated
    (imports / "q3.jsonl").write_text("".join(json.dumps(make_order(i)) + "\n" for i in range(1, 40)))
    out = run_cli("export", "q3.jsonl", "--columns", "id", "total", "--priority", "3", "--wait", "--json", **env)
    assert out.returncode == RET_OK, out.stderr
    record = json.loads(out.stdout)
    assert record["state"] == "SUCCESS" and record["priority"] == 3
    assert record["result"]["rows"]["Orders"] == 39 and os.path.exists(record["result"]["path"])


def test_export_without_wait_prints_the_id_at_once(operated):
    env, imports, _ = operated
    (imports / "one.jsonl").write_text(json.dumps(make_order(1)) + "\n")
    out = run_cli("export", "one.jsonl", "--columns", "id,total", **env)
    assert out.returncode == RET_OK, out.stderr
    message_id = out.stdout.strip()
    assert AsyncResult(message_id).get(timeout=20)["rows"]["Orders"] == 1


def test_email_with_a_context_file_is_delivered_and_followed(operated, tmp_path):
    env, _, inbox = operated
    context = tmp_path / "context.json"
    context.write_text(json.dumps(WELCOME))
    out = run_cli("email", "ann@example.com", "welcome", "--context", f"@{context}", "--wait", **env)
    assert out.returncode == RET_OK, out.stderr
    assert ": SUCCESS" in out.stdout
    assert any(mail["To"] == "ann@example.com" for mail in inbox.mails)


def test_email_sent_twice_with_one_idempotency_key_is_one_job(operated):
    env, _, _ = operated
    key = f"welcome-ann-{uuid.uuid4()}"
    context = json.dumps(WELCOME)
    first = run_cli("email", "ann@example.com", "welcome", "--context", context, "--idempotency-key", key, **env)
    again = run_cli("email", "ann@example.com", "welcome", "--context", context, "--idempotency-key", key, **env)
    assert first.returncode == again.returncode == RET_OK, first.stderr + again.stderr
    assert first.stdout.strip() == again.stdout.strip()


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ("@/nonexistent.json", "cannot be read"),
        ("@/dev/zero", "is larger than 16 MiB"),  # endless: read until memory ran out
        (f"@{sys.executable}", "is not UTF-8 text (byte"),  # a bare UnicodeDecodeError traceback
        pytest.param("[" * 50_000 + "]" * 50_000, "is JSON nested too deep to read", id="deep"),  # RecursionError
    ],
)
def test_email_with_a_bad_context_exits_5_naming_it(operated, context, reason):
    env, _, _ = operated
    out = run_cli("email", "ann@example.com", "welcome", "--context", context, **env)
    assert out.returncode == RET_ERROR and reason in out.stderr


def test_status_follow_of_an_unknown_id_answers_at_once(operated):
    env, _, _ = operated
    out = run_cli("status", str(uuid.uuid4()), "--follow", "--wait", "30", **env)
    assert out.returncode == RET_UNKNOWN and "PENDING" in out.stdout


def test_status_follow_refuses_an_id_of_another_form(operated):
    env, _, _ = operated
    out = run_cli("status", "job:1:done", "--follow", **env)
    assert out.returncode == RET_BAD_ID and "not a job id" in out.stderr


def test_queues_lists_each_queue_with_its_priority_from_the_management_api(operated):
    env, _, _ = operated

    def shown() -> dict:
        out = run_cli("queues", "--json", **env)
        assert out.returncode == RET_OK, out.stderr
        return json.loads(out.stdout)

    def by_name() -> dict:
        return {row["queue"]: row for row in shown()["queues"]}

    assert shown()["source"] == "management API"
    assert by_name()["default"]["max_priority"] == 10 and by_name()["slow"]["max_priority"] == 5
    # The management API's figures lag the server by its statistics interval (5 s).
    wait_until(lambda: by_name()["default"]["consumers"] >= 1, timeout=15, what="the worker counted as a consumer")


def test_queues_without_the_management_api_falls_back_to_passive_declares(operated):
    env, _, _ = operated
    out = run_cli("queues", "--json", **env, PIPELINE_MANAGEMENT_URL="http://guest:guest@127.0.0.1:1")
    assert out.returncode == RET_OK, out.stderr
    shown = json.loads(out.stdout)
    assert shown["source"].startswith("passive declares") and "default" in [r["queue"] for r in shown["queues"]]


def failed_mail(amqp) -> str:
    """A mail job that fails at once (unknown template) and is dead-lettered; its id."""
    message_id = run_mail(amqp, "no_such_template")
    AsyncResult(message_id).get(timeout=20, propagate=False)
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE + ".XQ") >= 1, what="the mail dead-lettered")
    return message_id


def run_mail(amqp, template: str) -> str:
    from pipeline.actors import send_email

    return send_email.send(to="ann@example.com", template=template, context={"secret": "reset-token-123"}).message_id


def test_dlq_list_and_show_explain_a_dead_letter_without_moving_it_or_showing_arguments(operated, amqp):
    env, _, _ = operated
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    message_id = failed_mail(amqp)
    out = run_cli("dlq", "list", "--json", **env)
    assert out.returncode == RET_OK, out.stderr
    (row,) = [r for r in json.loads(out.stdout) if r["message_id"] == message_id]
    assert row["actor"] == "send_email" and row["state"] == "FAILURE" and "no_such_template" in row["reason"]
    assert "context: object of 1 keys" in row["arguments"]
    assert "reset-token-123" not in out.stdout and "ann@example.com" not in out.stdout
    shown = run_cli("dlq", "show", message_id, "--json", **env)
    assert shown.returncode == RET_OK and json.loads(shown.stdout)["headers"]["actor"] == "send_email"
    # A job id in capitals, as some databases keep it, names the same job (as `status` reads it).
    shouted = run_cli("dlq", "show", message_id.upper(), "--json", **env)
    assert shouted.returncode == RET_OK and json.loads(shouted.stdout)["message_id"] == message_id
    assert queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == 1
    assert run_cli("dlq", "show", str(uuid.uuid4()), **env).returncode == RET_UNKNOWN


def test_dlq_requeue_runs_the_message_again_under_its_id_and_notes_it(operated, amqp):
    env, _, _ = operated
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    message_id = failed_mail(amqp)
    out = run_cli("dlq", "requeue", message_id.upper(), "--json", **env)
    assert out.returncode == RET_OK, out.stderr
    assert json.loads(out.stdout) == {"requeued": [message_id], "not_found": []}
    # It runs again (and fails again, the template still missing): the record says so.
    wait_until(lambda: (AsyncResult(message_id).info() or {}).get("requeues") == 1, what="the requeue noted")
    AsyncResult(message_id).get(timeout=20, propagate=False)
    record = AsyncResult(message_id).info()
    assert record["state"] == "FAILURE" and record["attempt"] == 1 and "requeued_at" in record
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == 1, what="the message dead-lettered again")


@pytest.mark.lasts(10)
def test_dlq_past_its_window_of_dead_letters_says_so_and_requeue_all_takes_every_one(operated, amqp):
    # A command looks at 1,000 dead letters at a time: past them, "no such message" was said of
    # one that is there, and "requeue --all" requeued the first 1,000 as if they were all.
    env, _, _ = operated
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    ids = []
    for n in range(DEFAULT_LIMIT + 1):
        message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=(n,), kwargs={}, options={})
        properties = pika.BasicProperties(message_id=message.message_id)
        amqp.basic_publish("", DEFAULT_QUEUE + ".XQ", message.encode(), properties)
        ids.append(message.message_id)
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == DEFAULT_LIMIT + 1, what="the dead letters")
    shown = run_cli("dlq", "show", ids[-1], **env)
    assert shown.returncode == RET_UNKNOWN and "among the first 1,000 (there are more)" in shown.stdout
    one = run_cli("dlq", "requeue", ids[-1], **env)
    assert one.returncode == RET_UNKNOWN and "only the first 1,000 dead letters were looked at" in one.stdout
    every = run_cli("dlq", "requeue", "--all", "--json", **env)
    assert every.returncode == RET_OK, every.stderr
    assert sorted(json.loads(every.stdout)["requeued"]) == sorted(ids)
    assert queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == 0


def test_dlq_requeue_passes_over_a_dead_letter_no_worker_could_run_saying_why(operated, amqp):
    # Another service's message that could never be published again (an actor's name longer
    # than an AMQP type carries) stopped `requeue --all` at it with a BrokerUnavailable, every
    # time, as it stayed first in the queue: the dead letters behind it were never requeued.
    env, _, _ = operated
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    hostile = [
        dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="x" * 300, args=(), kwargs={}, options={}),
        dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=(), kwargs={}, options={}, message_id="7"),
    ]
    for message in hostile:
        amqp.basic_publish("", DEFAULT_QUEUE + ".XQ", message.encode(), pika.BasicProperties(message_id="x"))
    amqp.basic_publish("", DEFAULT_QUEUE + ".XQ", b"not json", pika.BasicProperties(message_id=str(uuid.uuid4())))
    message_id = failed_mail(amqp)
    out = run_cli("dlq", "requeue", "--all", "--json", **env)
    assert out.returncode == RET_ERROR, out.stderr
    said = json.loads(out.stdout)
    assert said["requeued"] == [message_id] and said["not_found"] == []
    refused = list(said["refused"].values())
    assert len(refused) == 3
    assert "actor_name 'xxx" in refused[0] and "is not printable text of 1 to 255 bytes" in refused[0]
    assert "message_id '7' is not a job id" in refused[1] and "not a valid message" in refused[2]
    # They stay dead letters; the mail ran again.
    assert queue_depth(amqp, DEFAULT_QUEUE + ".XQ") >= 3
    wait_until(lambda: (AsyncResult(message_id).info() or {}).get("requeues") == 1, what="the requeue noted")
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")


def test_dlq_shows_another_service_s_hostile_actor_name_and_reason_as_text(operated, amqp):
    from pipeline.states import JobState
    from pipeline.store.records import get_store

    env, _, _ = operated
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    message_id, actor = str(uuid.uuid4()), "[/]x\x1b[2J"
    body = dramatiq.Message(
        queue_name="default", actor_name=actor, args=(), kwargs={}, options={}, message_id=message_id
    )
    amqp.basic_publish("", DEFAULT_QUEUE + ".XQ", body.encode())
    get_store().write(message_id, JobState.FAILURE, error={"type": "E", "message": "[red]\x1b]0;title\x07"})
    listed = run_cli("dlq", "list", PYTHONIOENCODING="utf-8", **env)
    assert listed.returncode == RET_OK, listed.stderr
    assert "[/]x\\x1b[2J" in listed.stdout and "E: [red]\\x1b]0;title\\x07" in listed.stdout
    shown = run_cli("dlq", "show", message_id, PYTHONIOENCODING="utf-8", **env)
    assert shown.returncode == RET_OK and "[/]x\\x1b[2J" in shown.stdout
    assert "\x1b" not in listed.stdout + shown.stdout and "\x07" not in listed.stdout + shown.stdout
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")


@pytest.mark.parametrize(
    "command", [["list", "--queue", "defualt"], ["requeue", "--all", "--queue", "defualt"], ["purge", "defualt"]]
)
def test_dlq_naming_a_queue_rabbitmq_does_not_have_exits_4_naming_it(operated, command):
    env, _, _ = operated
    out = run_cli("dlq", *command, **env)
    assert out.returncode == RET_UNKNOWN, out.stderr
    assert "RabbitMQ has no queue defualt.XQ" in out.stdout


def test_dlq_naming_a_queue_longer_than_amqp_names_exits_4_as_for_any_unknown_queue(operated):
    # The passive declare of its .XQ failed in pika (ShortStringTooLong): a traceback.
    env, _, _ = operated
    out = run_cli("dlq", "list", "--queue", "q" * 300, **env)
    assert out.returncode == RET_UNKNOWN, out.stderr
    assert "is not a queue of Dramatiq's on this virtual host" in out.stdout and "Traceback" not in out.stderr


def test_dlq_naming_a_delay_queue_exits_4_saying_what_it_is(operated):
    # It was read as its queue's name: `dlq purge default.DQ` purged default's dead letters.
    env, _, _ = operated
    out = run_cli("dlq", "purge", DEFAULT_QUEUE + ".DQ", **env)
    assert out.returncode == RET_UNKNOWN, out.stderr
    assert f"is a delay queue, which keeps no dead letters: name its queue, '{DEFAULT_QUEUE}'" in out.stdout


@pytest.mark.lasts(13)
def test_dlq_requeue_of_an_unknown_id_exits_4_and_purge_empties_the_queue(operated, amqp):
    env, _, _ = operated
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    failed_mail(amqp)
    missing = str(uuid.uuid4())
    out = run_cli("dlq", "requeue", missing, **env)
    assert out.returncode == RET_UNKNOWN and missing in out.stdout
    purged = run_cli("dlq", "purge", "default", "--json", **env)
    assert json.loads(purged.stdout) == {"queue": "default.XQ", "purged": 1}
    assert queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == 0


@pytest.mark.lasts(11)
def test_doctor_passes_every_check_when_all_is_well(operated):
    env, _, _ = operated
    out = run_cli("doctor", "--json", **env)
    results = json.loads(out.stdout)
    assert out.returncode == RET_OK, results
    assert "served by priority (default 0..10, slow 0..5)" in results[4]["detail"]
    assert [r["check"] for r in results] == [
        "RabbitMQ", "Redis", "management", "queues", "priorities", "timeouts", "SMTP", "exports", "imports",
    ]  # fmt: skip


def test_doctor_names_each_failure_with_its_fix(operated, tmp_path):
    env, _, _ = operated
    broken = {
        **env,
        "PIPELINE_QUEUE_PRIORITIES": "default=3,slow=5",
        "PIPELINE_SMTP_PORT": "1",
        "PIPELINE_IMPORT_DIR": str(tmp_path / "missing"),
    }
    out = run_cli("doctor", **broken)
    assert out.returncode == RET_FAILED
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    assert lines["queues"].startswith("FAIL") and "PRECONDITION_FAILED" in lines["queues"]
    assert lines["SMTP"].startswith("FAIL") and "PIPELINE_SMTP_HOST" in lines["SMTP"]
    assert lines["imports"].startswith("FAIL") and "create it" in lines["imports"]
    assert lines["Redis"].startswith("ok") and lines["exports"].startswith("ok")


def test_follow_draws_done_total_and_phase_on_a_terminal_until_the_job_ends(operated):
    from io import StringIO

    from rich.console import Console

    from pipeline.actors import export_orders
    from pipeline.cli.follow import follow

    message = export_orders.send(filter={"count": 600, "pause": 0.004})
    screen = StringIO()
    record = follow(message.message_id, timeout=60, console=Console(file=screen, force_terminal=True, width=120))
    assert record is not None and record["state"] == "SUCCESS"
    drawn = screen.getvalue()
    assert "/600" in drawn and "writing" in drawn and message.message_id[:8] in drawn


@pytest.mark.parametrize(
    "command",
    [["export"], ["email"], ["status"], ["jobs"], ["queues"], ["dlq"], ["dlq", "list"], ["dlq", "show"],
     ["dlq", "requeue"], ["dlq", "purge"], ["doctor"], ["demo"], ["check"]],
    ids=lambda words: " ".join(words),
)  # fmt: skip
def test_every_command_has_help(command):
    out = run_cli(*command, "--help")
    assert out.returncode == RET_OK and out.stdout.startswith("usage: pipeline " + " ".join(command))

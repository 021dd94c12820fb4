"""The ``pipeline`` command against real records."""

from __future__ import annotations

import json
import uuid

import pytest
from cli_runner import run_cli
from services import queue_depth

from pipeline.actors import ping
from pipeline.cli import RET_ERROR, RET_FAILED, RET_OK, RET_UNFINISHED, RET_UNKNOWN, RET_USAGE, main
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState
from pipeline.store.records import get_store

pytestmark = pytest.mark.integration


def finished(message_id: str, state: JobState, **fields) -> str:
    store = get_store()
    store.write(message_id, JobState.STARTED, attempt=1, actor="ping", queue="default")
    store.write(message_id, state, **fields)
    return message_id


def test_status_of_a_success_prints_the_result_and_exits_0(clean_redis):
    message_id = finished(str(uuid.uuid4()), JobState.SUCCESS, result={"rows": 3})
    out = run_cli("status", message_id)
    assert out.returncode == RET_OK
    assert f"job {message_id}: SUCCESS" in out.stdout
    assert '{"rows": 3}' in out.stdout and "ping" in out.stdout


def test_status_of_a_failure_prints_the_error_and_exits_1(clean_redis):
    error = {"type": "ValueError", "message": "row 17: total 'abc' is not a number", "traceback": "Traceback..."}
    message_id = finished(str(uuid.uuid4()), JobState.FAILURE, error=error)
    out = run_cli("status", message_id)
    assert out.returncode == RET_FAILED
    assert "ValueError: row 17: total 'abc' is not a number" in out.stdout


def test_status_of_a_record_holding_a_lone_surrogate_prints_it_escaped(clean_redis):
    # Another service's job may write one (an OSError over a file name that is not UTF-8).
    error = {"type": "FileNotFoundError", "message": "no file 'q3\udce9.csv'", "traceback": ""}
    message_id = finished(str(uuid.uuid4()), JobState.FAILURE, error=error)
    out = run_cli("status", message_id, PYTHONIOENCODING="utf-8")
    assert out.returncode == RET_FAILED, out.stderr
    assert "FileNotFoundError: no file 'q3\\udce9.csv'" in out.stdout
    out = run_cli("status", "--json", message_id, PYTHONIOENCODING="utf-8")
    assert out.returncode == RET_FAILED and "q3\\udce9.csv" in out.stdout, out.stderr


def test_status_takes_an_id_in_capitals_as_some_databases_keep_it(clean_redis):
    message_id = finished(str(uuid.uuid4()), JobState.SUCCESS, result=[1])
    out = run_cli("status", message_id.upper())
    assert out.returncode == RET_OK, out.stderr
    assert f"job {message_id}: SUCCESS" in out.stdout
    assert AsyncResult(message_id.upper()).get(timeout=1) == [1]


def test_status_json_is_the_record(clean_redis):
    message_id = finished(str(uuid.uuid4()), JobState.SUCCESS, result=[1, 2])
    out = run_cli("status", "--json", message_id)
    record = json.loads(out.stdout)
    assert record["state"] == "SUCCESS" and record["result"] == [1, 2] and record["message_id"] == message_id


def test_status_of_an_unknown_id_exits_4(clean_redis, capsys):
    assert main(["status", str(uuid.uuid4())]) == RET_UNKNOWN
    assert "PENDING" in capsys.readouterr().out


def test_status_of_a_running_job_exits_3_and_shows_progress(clean_redis, capsys):
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.STARTED, attempt=1)
    get_store().update(message_id, progress={"done": 40, "total": 100, "phase": "rows"})
    assert main(["status", message_id]) == RET_UNFINISHED
    assert "40/100 (rows)" in capsys.readouterr().out


def test_status_wait_waits_for_the_end(start_worker, purge, capsys):
    purge("default")
    start_worker(["default"])
    message = ping.send("w")
    assert main(["status", "--wait", "20", message.message_id]) == RET_OK
    assert AsyncResult(message.message_id).successful()


def test_check_reports_both_services(amqp, redis_client):
    out = run_cli("check")
    assert out.returncode == RET_OK, out.stdout + out.stderr
    assert "RabbitMQ  ok" in out.stdout and "Redis     ok" in out.stdout


def test_check_fails_when_a_service_is_down(amqp):
    out = run_cli("check", PIPELINE_REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert out.returncode == RET_FAILED
    assert "Redis     DOWN  redis://:***@127.0.0.1:1/0" in out.stdout and "hunter2" not in out.stdout


def test_status_of_a_revoked_job_exits_1(clean_redis, capsys):
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.QUEUED, actor="ping", queue="default")
    assert AsyncResult(message_id).revoke()
    assert main(["status", message_id]) == RET_FAILED
    assert "REVOKED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["status"],
        ["status", "x", "--wait", "soon"],
        ["status", "x", "--wait", "nan"],
        ["jobs", "--limit", "0"],
        ["dlq", "list", "--limit", "-1"],
        ["dlq", "requeue", "--all", "--limit", "0"],
        ["demo", "--orders", "-5"],
        # 70000 was taken modulo 65536: the dashboard listened on port 4464, and said so.
        ["web", "--port", "70000"],
        ["web", "--port", "-1"],
        # An empty actor (an unset variable) listed no job, as if none had run.
        ["jobs", "--actor", ""],
        ["jobs", "--actor", "ping\n"],
        ["dlq", "requeue", "--actor", ""],
        ["no-such-command"],
    ],
)
def test_a_wrong_command_line_exits_2(args):
    out = run_cli(*args)
    assert out.returncode == RET_USAGE
    assert "usage: pipeline" in out.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["export", "q3.jsonl", "--columns", ""], "--columns names no column"),
        (["export", "q3.jsonl", "--columns", " , "], "--columns names no column"),
        (["export", "q3.jsonl", "--name", ""], "name must be printable text of 1 to 200 characters, not ''"),
        (["export", "q3.jsonl", "--notify", ""], "notify names no address in ''"),
    ],
    ids=["columns-empty", "columns-commas", "name-empty", "notify-empty"],
)
def test_an_empty_option_is_refused_not_read_as_left_out(purge, amqp, args, named):
    # An option given as an empty shell variable ("--name $NAME") was read as not given: the
    # export went out with every column, named "orders", or with no mail, and exit 0.
    purge(DEFAULT_QUEUE)
    purge(SLOW_QUEUE)
    out = run_cli(*args)
    assert out.returncode == RET_ERROR, out.stdout + out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr
    assert queue_depth(amqp, SLOW_QUEUE) == 0 and queue_depth(amqp, DEFAULT_QUEUE) == 0


def test_status_exits_5_naming_redis_when_it_cannot_be_reached():
    out = run_cli("status", str(uuid.uuid4()), PIPELINE_REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert out.returncode == RET_ERROR
    assert "redis://:***@127.0.0.1:1/0" in out.stderr and "hunter2" not in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_settings_exit_5_naming_the_variable():
    out = run_cli("status", str(uuid.uuid4()), PIPELINE_RESULT_TTL="a day")
    assert out.returncode == RET_ERROR
    assert "PIPELINE_RESULT_TTL" in out.stderr and "Traceback" not in out.stderr


#: Text a job's error may hold that a terminal would obey or rich would read as markup: a
#: closing tag with nothing to close, a clipboard write (OSC 52), a screen clear in C0 and C1.
HOSTILE = "[/] [red]x \x1b]52;c;ZXZpbA==\x07 \x1b[2J \x9b2J"


def assert_shown_inert(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert "\\x1b]52;c;ZXZpbA==\\x07" in text and "\\x9b2J" in text


def test_status_shows_a_record_s_control_characters_as_escapes(clean_redis):
    error = {"type": "ValueError", "message": HOSTILE, "traceback": f"Traceback\n  {HOSTILE}\n"}
    message_id = finished(str(uuid.uuid4()), JobState.FAILURE, error=error)
    out = run_cli("status", message_id, PYTHONIOENCODING="utf-8")
    assert out.returncode == RET_FAILED, out.stderr
    assert "ValueError: [/] [red]x" in out.stdout
    assert_shown_inert(out.stdout)


def test_jobs_shows_markup_and_escapes_in_records_as_text(clean_redis):
    error = {"type": "ValueError", "message": HOSTILE}
    finished(str(uuid.uuid4()), JobState.FAILURE, error=error)
    out = run_cli("jobs", "--state", "failure", PYTHONIOENCODING="utf-8")
    assert out.returncode == RET_OK, out.stderr
    assert "[/] [red]x" in out.stdout
    assert "\x1b" not in out.stdout and "\\x1b" in out.stdout


def test_follow_draws_a_hostile_phase_as_text_and_skips_counts_that_are_not_numbers(clean_redis):
    from io import StringIO

    from rich.console import Console

    from pipeline.cli.follow import follow

    message_id = str(uuid.uuid4())
    store = get_store()
    store.write(message_id, JobState.STARTED, attempt=1, actor="ping", queue="default")
    # Written by hand, as another program might: no check stood in its way.
    store.update(message_id, progress={"done": "many", "total": float("nan"), "phase": HOSTILE})
    screen = StringIO()
    record = follow(message_id, timeout=0.6, console=Console(file=screen, force_terminal=True, width=200))
    assert record is not None and record["state"] == "STARTED"
    drawn = screen.getvalue()
    assert "[/] [red]x" in drawn and "\\x1b]52" in drawn and "ZXZpbA==\x07" not in drawn

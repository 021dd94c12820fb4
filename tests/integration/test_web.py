"""The dashboard against the real services: every page and action, the live updates, who may do
what (a permission matrix), escaping of whatever a record holds, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import dramatiq
import pika
import pytest
import sample_actors
from cli_runner import run_cli
from services import ROOT, queue_depth
from testenv import make_settings
from waiting import wait_until
from werkzeug.test import Client, TestResponse

from pipeline.actors import ping
from pipeline.broker import broker
from pipeline.dead_letters import DEFAULT_LIMIT
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState
from pipeline.store.audit import AuditLog
from pipeline.store.records import get_store
from pipeline.store.workers import WorkerEntry, WorkerRegistry
from pipeline.web import Role, make_app
from pipeline.web.access import CSRF_COOKIE

pytestmark = pytest.mark.integration

ROLES = {"viewer": ("vic", Role.VIEWER), "operator": ("olga", Role.OPERATOR)}


def by_header(request):
    """The test's login: the X-Test-User header names a role."""
    return ROLES.get(request.headers.get("X-Test-User", ""))


@pytest.fixture
def client() -> Client:
    return Client(make_app(authorize=by_header, writes=True, settings=make_settings()))


def csrf(client: Client, user: str = "operator") -> str:
    """Open a page, as a browser would, and return the CSRF token its cookie holds."""
    client.get("/", headers={"X-Test-User": user})
    cookie = client.get_cookie(CSRF_COOKIE)
    assert cookie is not None
    return cookie.value


def post(client: Client, path: str, token: str | None, user: str = "operator", **form) -> TestResponse:
    data = dict(form)
    if token is not None:
        data["csrf"] = token
    return client.post(path, data=data, headers={"X-Test-User": user})


def fixed(redis_client, key: str) -> None:
    redis_client.set(sample_actors.FIXED_PREFIX + key, "1")


def events(response: TestResponse) -> Iterator[str]:
    """The data of each server-sent event of a streamed response, as they come."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
            if data:
                yield "\n".join(data)


def test_a_job_failed_dead_lettered_requeued_from_the_page_and_finished(client, purge, start_worker, redis_client):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=2)
    key = f"web-{uuid.uuid4()}"
    sent = sample_actors.fails_until_fixed.send(key, secret="reset-link-s3cret")
    result = AsyncResult(sent.message_id)
    wait_until(lambda: result.state is JobState.FAILURE, 10, "the failure")

    listed = client.get("/jobs?state=FAILURE", headers={"X-Test-User": "viewer"})
    assert listed.status_code == 200 and sent.message_id in listed.text
    page = client.get(f"/jobs/{sent.message_id}", headers={"X-Test-User": "viewer"})
    assert page.status_code == 200 and "FAILURE" in page.text and "is not fixed yet" in page.text
    dead = client.get("/dead-letters", headers={"X-Test-User": "viewer"})
    assert sent.message_id in dead.text and "fails_until_fixed" in dead.text
    assert key in dead.text and "reset-link-s3cret" not in dead.text  # only `key` is declared safe to show

    token = csrf(client)
    stream = client.get(
        f"/live/job?id={sent.message_id}",
        headers={"X-Test-User": "operator", "Accept": "text/event-stream"},
        buffered=False,
    )
    updates = events(stream)
    assert "FAILURE" in next(updates)
    fixed(redis_client, key)
    requeued = post(client, "/dead-letters/requeue", token, ids=sent.message_id, queue="default")
    assert requeued.status_code == 303 and "requeued+1" in requeued.headers["Location"]
    # The page's live part moves on by itself until the job ends.
    deadline = time.monotonic() + 20
    for update in updates:
        if "SUCCESS" in update:
            break
        assert time.monotonic() < deadline, "no live update to SUCCESS"
    stream.close()
    assert result.get(timeout=5) == "fixed"
    assert AuditLog(get_store().redis).latest(1)[0] | {"when": ""} == {
        "who": "olga",
        "what": "requeue",
        "when": "",
        "jobs": [sent.message_id],
        "detail": "queue=default",
    }


def test_a_failing_job_shows_in_the_live_failure_list_within_two_seconds(client, purge, start_worker):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=2)
    stream = client.get(
        "/live/jobs?state=FAILURE", headers={"X-Test-User": "viewer", "Accept": "text/event-stream"}, buffered=False
    )
    updates = events(stream)
    next(updates)
    sent = sample_actors.fails_until_fixed.send(f"live-{uuid.uuid4()}")
    seen: dict[str, float] = {}

    def watch() -> None:
        for update in updates:
            if sent.message_id in update:
                seen["at"] = time.monotonic()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = AsyncResult(sent.message_id)
    wait_until(lambda: result.state is JobState.FAILURE, 10, "the failure")
    failed_at = time.monotonic()
    watcher.join(5)
    stream.close()
    assert "at" in seen and seen["at"] - failed_at < 2.0


def test_revoke_and_forget_from_the_job_page(client, clean_redis):
    sent = broker.enqueue(ping.message_with_options(args=("later",)), delay=600_000)
    token = csrf(client)
    revoked = post(client, f"/jobs/{sent.message_id}/revoke", token)
    assert revoked.status_code == 303 and "done=revoked" in revoked.headers["Location"]
    assert AsyncResult(sent.message_id).state is JobState.REVOKED
    forgotten = post(client, f"/jobs/{sent.message_id}/forget", token)
    assert forgotten.status_code == 303 and AsyncResult(sent.message_id).state is JobState.PENDING
    entries = AuditLog(get_store().redis).latest(2)
    assert [(e["who"], e["what"], e["jobs"]) for e in entries] == [
        ("olga", "forget", [sent.message_id]),
        ("olga", "revoke", [sent.message_id]),
    ]


def test_a_worker_silent_for_three_beats_shows_as_lost(client, clean_redis):
    registry = WorkerRegistry(get_store().redis)
    entry = WorkerEntry("old-host:42", "old-host", 42, ["default"], 8, 1, time.time() - 60, time.time())
    registry.beat(entry)
    clean_redis.hset(
        get_store().keys.workers, entry.id, entry.to_json().replace(str(entry.beat_at), str(time.time() - 7))
    )
    page = client.get("/workers", headers={"X-Test-User": "viewer"})
    assert '<tr class="lost">' in page.text and "old-host:42" in page.text
    assert "lost" in run_cli("workers").stdout


def test_the_overview_and_workers_pages_show_queues_actors_and_workers(client, purge, start_worker):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=2)
    AsyncResult(ping.send("hello").message_id).get(timeout=10)
    wait_until(lambda: "running" in client.get("/workers", headers={"X-Test-User": "viewer"}).text, 10, "a heartbeat")
    overview = client.get("/", headers={"X-Test-User": "viewer"})
    assert overview.status_code == 200
    assert "default.XQ" in overview.text and ">ping<" in overview.text and "1 alive" in overview.text


# -- who may do what -----------------------------------------------------------------------


#: Records pipeline's write script never writes: by hand, or by a later version's new state.
ODD_RECORDS = {
    "a state this version does not know": {"state": '"WAITING"', "actor": '"ping"'},
    "a field that is not JSON": {"state": "SUCCESS", "result": "{oops"},
    "an error that is text": {"state": '"FAILURE"', "error": '"boom"'},
    "progress that is a list": {"state": '"STARTED"', "progress": "[1, 2]"},
}


@pytest.mark.parametrize("fields", list(ODD_RECORDS.values()), ids=list(ODD_RECORDS))
def test_a_record_pipeline_did_not_write_is_shown_not_a_server_error(client, clean_redis, fields):
    message_id = str(uuid.uuid4())
    clean_redis.hset(get_store().keys.record(message_id), mapping=fields)
    page = client.get(f"/jobs/{message_id}", headers={"X-Test-User": "viewer"})
    assert page.status_code == 200, page.text
    out = run_cli("status", message_id)
    assert "Traceback" not in out.stderr and f"job {message_id}:" in out.stdout, out.stderr


def test_an_attempt_history_pipeline_did_not_write_is_left_out_not_a_server_error(client, clean_redis):
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.RETRY, attempt=1, actor="ping", queue="default")
    clean_redis.rpush(get_store().keys.attempts(message_id), "{oops", "5", '"text"')
    page = client.get(f"/jobs/{message_id}", headers={"X-Test-User": "viewer"})
    assert page.status_code == 200 and "RETRY" in page.text, page.text


@pytest.fixture
def sms_queue(amqp) -> Iterator[str]:
    """Another service's queue, declared as its actors' would be, deleted afterwards."""
    queue = f"pipeline-test-sms-{uuid.uuid4().hex[:8]}"
    broker.declare_queue(queue, ensure=True)
    yield queue
    for name in (queue, queue + ".DQ", queue + ".XQ"):
        amqp.queue_delete(name)


def dead_letter(amqp, queue: str, n: int = 1) -> list[str]:
    """Publish ``n`` messages of an actor no worker here knows straight to ``queue``'s dead letters."""
    ids = []
    for i in range(n):
        message = dramatiq.Message(queue_name=queue, actor_name="send_sms", args=(i,), kwargs={}, options={})
        amqp.basic_publish("", queue + ".XQ", message.encode(), pika.BasicProperties(message_id=message.message_id))
        ids.append(message.message_id)
    wait_until(lambda: queue_depth(amqp, queue + ".XQ") == n, what="the dead letters")
    return ids


def test_another_service_s_dead_letters_are_shown_requeued_and_purged(client, amqp, sms_queue):
    (first,) = dead_letter(amqp, sms_queue)
    page = client.get("/dead-letters", headers={"X-Test-User": "viewer"})
    assert f"{sms_queue}.XQ (1)" in page.text and first in page.text and "send_sms" in page.text
    token = csrf(client)
    requeued = post(client, "/dead-letters/requeue", token, ids=first, queue=sms_queue)
    assert requeued.status_code == 303 and "requeued+1" in requeued.headers["Location"], requeued.text
    assert queue_depth(amqp, sms_queue) == 1 and queue_depth(amqp, sms_queue + ".XQ") == 0
    dead_letter(amqp, sms_queue)
    purged = post(client, "/dead-letters/purge", token, queue=sms_queue, confirm=sms_queue)
    assert purged.status_code == 303 and "purged+1" in purged.headers["Location"], purged.text


def test_requeue_and_retry_say_when_dead_letters_lay_past_the_first_thousand(client, amqp, sms_queue):
    ids = dead_letter(amqp, sms_queue, DEFAULT_LIMIT + 1)
    token = csrf(client)
    requeued = post(client, "/dead-letters/requeue", token, ids=ids[-1], queue=sms_queue)
    assert requeued.status_code == 303, requeued.text
    assert "requeued+0%3B+only+the+first+1%2C000+dead+letters+were+looked+at" in requeued.headers["Location"]
    retried = post(client, f"/jobs/{ids[-1]}/retry", token)
    assert retried.status_code == 400 and "among the first 1,000 looked at, and more remain" in retried.text
    assert queue_depth(amqp, sms_queue + ".XQ") == DEFAULT_LIMIT + 1


def test_purging_the_dead_letters_of_a_queue_rabbitmq_does_not_have_is_refused_naming_it(client):
    token = csrf(client)
    refused = post(client, "/dead-letters/purge", token, queue="defualt", confirm="defualt")
    assert refused.status_code == 400 and "&#39;defualt&#39; is not a queue of Dramatiq" in refused.text


def test_a_queue_is_named_for_its_dead_letters_as_the_command_line_takes_it(client, amqp, sms_queue):
    # The dashboard refused a queue named by its .XQ, which `pipeline dlq` takes; both now
    # follow one rule, and a delay queue is refused saying what it is.
    token = csrf(client)
    refused = post(client, "/dead-letters/purge", token, queue=sms_queue + ".DQ", confirm=sms_queue + ".DQ")
    assert refused.status_code == 400 and "is a delay queue, which keeps no dead letters" in refused.text
    dead_letter(amqp, sms_queue, 2)
    purged = post(client, "/dead-letters/purge", token, queue=sms_queue + ".XQ", confirm=sms_queue + ".XQ")
    assert purged.status_code == 303, purged.text
    assert queue_depth(amqp, sms_queue + ".XQ") == 0


JOB = "0b7a3c3e-1111-4222-8333-444455556666"
PAGES = ["/", "/jobs", f"/jobs/{JOB}", "/dead-letters", "/workers", "/live/overview", "/live/jobs", "/live/workers"]
ACTIONS = {
    f"/jobs/{JOB}/revoke": ({}, 303),
    f"/jobs/{JOB}/forget": ({}, 303),
    f"/jobs/{JOB}/retry": ({}, 400),  # no dead letter holds it: refused, with the reason
    "/dead-letters/requeue": ({"ids": JOB, "queue": "default"}, 303),
    "/dead-letters/purge": ({"queue": "slow", "confirm": "slow"}, 303),
}


@pytest.fixture
def known_job(clean_redis):
    get_store().write(JOB, JobState.SUCCESS, attempt=1, actor="ping", queue="default", result={"pong": 1})
    # The actions name pipeline's queues, which exist on the virtual host once any worker or send
    # declared them: declared here, so that the test holds run alone too.
    for queue in (DEFAULT_QUEUE, SLOW_QUEUE):
        broker.declare_queue(queue, ensure=True)


def test_requeue_from_the_page_passes_over_a_dead_letter_no_worker_could_run(client, amqp, purge):
    # It raised at the first such dead letter: the page answered 500, the rest stayed behind it.
    purge(DEFAULT_QUEUE)
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    hostile = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="x" * 300, args=(), kwargs={}, options={})
    runnable = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=(1,), kwargs={}, options={})
    for message in (hostile, runnable):
        amqp.basic_publish("", DEFAULT_QUEUE + ".XQ", message.encode(), pika.BasicProperties())
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE + ".XQ") == 2, what="the dead letters")
    requeued = post(client, "/dead-letters/requeue", csrf(client), actor="x" * 300, queue="default")
    assert requeued.status_code == 303, requeued.text
    assert "requeued+0%3B+1+left%2C+as+no+worker+could+run+them" in requeued.headers["Location"]
    everything = post(client, "/dead-letters/requeue", csrf(client), actor="ping", queue="default")
    assert everything.status_code == 303 and "requeued+1" in everything.headers["Location"]
    wait_until(lambda: queue_depth(amqp, DEFAULT_QUEUE) == 1, what="the runnable one requeued")
    retried = post(client, f"/jobs/{hostile.message_id}/retry", csrf(client))
    assert retried.status_code == 400 and "is not printable text of 1 to 255 bytes" in retried.text
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    purge(DEFAULT_QUEUE)


def test_a_job_page_takes_its_id_in_capitals(client, known_job):
    page = client.get(f"/jobs/{JOB.upper()}", headers={"X-Test-User": "viewer"}, follow_redirects=True)
    assert page.status_code == 200 and "SUCCESS" in page.text and JOB.upper() not in page.text
    assert page.request.path.endswith(f"/jobs/{JOB}")
    live = client.get(f"/live/job?id={JOB.upper()}", headers={"X-Test-User": "viewer"})
    assert live.status_code == 200 and "SUCCESS" in live.text


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("user", ["anonymous", "viewer", "operator"])
def test_pages_answer_by_role(client, known_job, path, user):
    got = client.get(path, headers={"X-Test-User": user})
    assert got.status_code == (401 if user == "anonymous" else 200), got.text
    # A page takes no POST.
    token = csrf(client, "viewer")
    assert post(client, path, token, user=user).status_code == (401 if user == "anonymous" else 405)


@pytest.mark.parametrize("path", list(ACTIONS))
@pytest.mark.parametrize("user", ["anonymous", "viewer", "operator"])
@pytest.mark.parametrize("with_token", [False, True], ids=["no-csrf", "csrf"])
def test_actions_answer_by_role_and_token(client, known_job, path, user, with_token):
    form, done = ACTIONS[path]
    token = csrf(client, "viewer") if with_token else None
    got = post(client, path, token, user=user, **form)
    if user == "anonymous":
        expected = 401
    elif user == "viewer" or not with_token:
        expected = 403
    else:
        expected = done
    assert got.status_code == expected, got.text
    assert "Traceback" not in got.text
    # An action takes no GET.
    assert client.get(path, headers={"X-Test-User": user}).status_code == (401 if user == "anonymous" else 405)


def test_a_read_only_dashboard_refuses_every_action_even_to_an_operator(known_job):
    client = Client(make_app(authorize=by_header, writes=False, settings=make_settings()))
    token = csrf(client)
    for path, (form, _) in ACTIONS.items():
        got = post(client, path, token, **form)
        assert got.status_code == 403 and "read-only" in got.text
    assert "Revoke" not in client.get(f"/jobs/{JOB}", headers={"X-Test-User": "operator"}).text


def test_a_token_from_another_cookie_is_refused(client, known_job):
    csrf(client)
    got = post(client, f"/jobs/{JOB}/revoke", "forged-token-of-another-site")
    assert got.status_code == 403 and "CSRF" in got.text


# -- escaping and bad input ----------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def test_every_value_a_page_shows_from_a_record_is_text(client, clean_redis):
    message_id = str(uuid.uuid4())
    get_store().write(
        message_id,
        JobState.FAILURE,
        attempt=1,
        actor=f"<img src=x onerror=alert(1)>{HOSTILE}",
        queue=HOSTILE,
        enqueued_at="2026-01-01T00:00:00+00:00",
        started_at="2026-01-01T00:00:01+00:00",
        finished_at="2026-01-01T00:00:02+00:00",
        error={"type": HOSTILE, "message": f"bad\x1b[31m\x00 {HOSTILE}", "traceback": HOSTILE},
    )
    running = str(uuid.uuid4())
    get_store().write(
        running,
        JobState.STARTED,
        attempt=2,
        actor="export_orders",
        progress={"done": 1, "total": 3, "phase": f"{HOSTILE}\x07"},
        interrupted=f"{HOSTILE} by a deploy",
        interrupted_at="2026-01-01T00:00:00+00:00",
    )
    WorkerRegistry(get_store().redis).beat(
        WorkerEntry(f"{HOSTILE}:1", HOSTILE, 1, [HOSTILE], 8, 0, time.time(), time.time())
    )
    succeeded = str(uuid.uuid4())
    get_store().write(
        succeeded,
        JobState.SUCCESS,
        attempt=1,
        actor="export_orders",
        result={"url": "javascript:alert(1)", "file_name": HOSTILE, "notified": HOSTILE},
    )
    pages = [
        f"/jobs/{message_id}",
        f"/jobs/{succeeded}",
        f"/jobs/{running}",
        "/jobs",
        "/",
        "/workers",
        f"/live/job?id={message_id}",
        f"/live/job?id={running}",
        "/live/jobs",
        "/live/workers",
    ]
    for path in pages:
        got = client.get(path, headers={"X-Test-User": "viewer"})
        assert got.status_code == 200, path
        assert "<script>alert" not in got.text and "<img src=x" not in got.text, path
        assert 'href="javascript:' not in got.text, path
        assert "\x1b" not in got.text and "\x00" not in got.text and "\x07" not in got.text, path
    job_page = client.get(f"/jobs/{message_id}", headers={"X-Test-User": "viewer"})
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job_page.text and "\\x1b[31m\\x00" in job_page.text
    policy = job_page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in job_page.text.replace('<script src="/static/live.js" defer></script>', "")


def test_a_record_holding_lone_surrogates_is_shown_with_escapes(client, clean_redis):
    # As another service's job may write them: an OSError over a file name that is not UTF-8.
    message_id = str(uuid.uuid4())
    get_store().write(
        message_id,
        JobState.FAILURE,
        attempt=1,
        actor="scan\udcff",
        queue="default",
        finished_at="2026-01-01T00:00:02+00:00",
        error={"type": "FileNotFoundError", "message": "no file 'q3\udce9.csv'", "traceback": "at 'q3\udce9.csv'"},
    )
    succeeded = str(uuid.uuid4())
    get_store().write(succeeded, JobState.SUCCESS, attempt=1, actor="scan", result={"name": "M\udcfcller"})
    pages = {}
    for path in (f"/jobs/{message_id}", f"/jobs/{succeeded}", "/jobs", f"/live/job?id={message_id}", "/live/jobs"):
        pages[path] = client.get(path, headers={"X-Test-User": "viewer"})
        assert pages[path].status_code == 200, path
    assert "no file &#39;q3\\udce9.csv&#39;" in pages[f"/jobs/{message_id}"].text
    assert "M\\udcfcller" in pages[f"/jobs/{succeeded}"].text


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/jobs?state=NOPE", 400, "is not one of"),
        ("/jobs?window=2y", 400, "window"),
        ("/jobs?before=abc", 400, "cursor"),
        ("/jobs?before=%C2%B2", 400, "cursor"),  # a superscript two: a digit to str.isdigit, not to int
        ("/jobs?actor=%3Cscript%3E%0A", 400, "not an actor name"),  # a line break: no AMQP type holds it
        ("/jobs?prefix=zz%00", 400, "id prefix"),
        ("/jobs/not-an-id", 404, "is not a job id"),
        ("/jobs/3f0c2a9e-5b7d-4e41-9c6a-1d8e2f4b7a60", 404, "no record"),  # an id no test makes
        ("/jobs?before=1", 404, "no jobs past this point"),
        ("/nowhere", 404, "no such page"),
        ("/static/secrets.txt", 404, "no such file"),
    ],
)
def test_bad_input_answers_with_a_message_never_a_traceback(client, clean_redis, path, status, says):
    got = client.get(path, headers={"X-Test-User": "viewer"})
    assert got.status_code == status and says in got.text and "Traceback" not in got.text


@pytest.mark.parametrize(
    "actor", ["send-invoice", "billing:send invoice", "envoyer_la_facture_é", "a" * 255, '<script>"q"\\</script>']
)
def test_the_overview_links_to_the_jobs_of_any_actor_a_service_may_declare(client, clean_redis, actor):
    # Any printable name of at most 255 bytes is an actor's name; the filter took only identifiers.
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.SUCCESS, attempt=1, actor=actor, queue="default", result=None)
    overview = client.get("/", headers={"X-Test-User": "viewer"})
    link = f'href="/jobs?actor={quote(actor)}"'
    assert link in overview.text
    jobs = client.get(f"/jobs?actor={quote(actor)}", headers={"X-Test-User": "viewer"})
    assert jobs.status_code == 200 and message_id in jobs.text
    assert "<script>" not in overview.text and "<script>" not in jobs.text


def test_an_actor_filter_no_actor_could_have_is_refused(client, clean_redis):
    for name in ("a" * 256, "tab%09in", "%C3%A9" * 128):
        got = client.get(f"/jobs?actor={name}", headers={"X-Test-User": "viewer"})
        assert got.status_code == 400 and "not an actor name" in got.text, name


def test_a_page_past_the_end_and_pages_in_between_follow_the_cursor(client, clean_redis):
    store = get_store()
    ids = [str(uuid.uuid4()) for _ in range(120)]
    for message_id in ids:
        store.write(message_id, JobState.SUCCESS, attempt=1, actor="ping", result=None)
        time.sleep(0.0005)
    seen: list[str] = []
    path = "/jobs?actor=ping"
    while path:
        got = client.get(path, headers={"X-Test-User": "viewer"})
        assert got.status_code == 200
        seen += [i for i in ids if i in got.text]
        marker = 'class="next" href="'
        path = got.text.split(marker, 1)[1].split('"', 1)[0].replace("&amp;", "&") if marker in got.text else ""
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)


# -- standalone ----------------------------------------------------------------------------


def serve(*args: str, **env: str) -> tuple[subprocess.Popen[str], str]:
    """``pipeline web`` in a subprocess; the process and the URL it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "web", "--port", "0", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "pipeline dashboard on http://" in line, line
    return process, line.split(" on ", 1)[1].split(" ", 1)[0]


def test_pipeline_web_serves_the_dashboard_read_only_on_this_machine(clean_redis):
    process, url = serve()
    try:
        with urllib.request.urlopen(url + "jobs") as answer:
            assert answer.status == 200 and "(read-only)" in answer.read().decode()
        request = urllib.request.Request(url + f"jobs/{uuid.uuid4()}/revoke", data=b"csrf=x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403
    finally:
        process.terminate()
        process.wait(10)


def test_pipeline_web_with_a_token_asks_for_it(clean_redis):
    process, url = serve(PIPELINE_WEB_TOKEN="s3cret-token", PIPELINE_WEB_WRITES="true")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret-token"})
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 200 and "(operator)" in answer.read().decode()
    finally:
        process.terminate()
        process.wait(10)


def test_pipeline_web_beyond_this_machine_needs_credentials():
    got = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "web", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode != 0 and "PIPELINE_WEB_TOKEN" in got.stdout + got.stderr


def test_the_job_page_shows_every_attempt_with_its_error(client, purge, start_worker, clean_redis):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=2)
    key = f"attempts-{uuid.uuid4()}"
    result = AsyncResult(sample_actors.flaky.send(key, 2).message_id)
    assert result.get(timeout=30) == 3
    page = client.get(f"/jobs/{result.id}", headers={"X-Test-User": "viewer"}).text
    for attempt in (1, 2):
        assert f"attempt {attempt} started" in page
        assert f"attempt {attempt} failed; retried — ConnectionError: run {attempt} of {key} fails on purpose" in page
    assert "attempt 3 started" in page and "succeeded" in page
    assert [entry["attempt"] for entry in get_store().attempts(result.id)] == [1, 2]
    client_forgets = Client(make_app(authorize=by_header, writes=True, settings=make_settings()))
    assert post(client_forgets, f"/jobs/{result.id}/forget", csrf(client_forgets)).status_code == 303
    wait_until(lambda: get_store().attempts(result.id) == [], 5, "the attempts forgotten with the record")

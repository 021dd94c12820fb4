"""Bad input of every kind, through a real worker: refused at send when it can be, else failed at
the first attempt with a reason that names the problem; never retried, never left unfinished."""

from __future__ import annotations

import datetime
import json
import math
import uuid

import dramatiq
import pika
import pytest
import testenv
from export_support import export_env, make_folders
from mail_support import WELCOME, mail_env
from sample_source import make_order
from services import WorkerProcess, flush_queue
from smtp import running_smtp_server
from waiting import wait_until

from pipeline.actors import export_orders, ping, send_email
from pipeline.errors import InvalidMessage, InvalidPriority
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration

ORDER = {"customer": {"name": "A"}, "order": {"id": "1", "currency": "EUR", "total": 1, "items": []}}


def nested(depth: int) -> list:
    """A list ``depth`` lists deep."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def order(**changes):
    return {**make_order(1), **changes}


def item(**changes):
    base = make_order(1)
    return {**base, "items": [{**base["items"][0], **changes}]}


#: Calls a worker must fail at their first attempt: (actor, keyword arguments, files to write
#: in the import folder, text the error must hold).
FAILED_IN_THE_WORKER = {
    "total not a number": (export_orders, {"orders": [make_order(1), order(total="abc")]}, {}, "row 2: total 'abc'"),
    # Named as an order file: /etc/passwd itself is refused at send, being of no known format.
    "path out of the import folder": (
        export_orders,
        {"file": "../../etc/passwd.jsonl"},
        {},
        "outside the import folder",
    ),
    "file that does not exist": (export_orders, {"file": "q9.jsonl"}, {}, "does not exist"),
    "unknown file format": (export_orders, {"file": "orders.txt"}, {"orders.txt": "x"}, "unknown format"),
    "date out of range": (export_orders, {"orders": [order(created_at="2026-13-45T10:00:00")]}, {}, "ISO 8601"),
    "quantity zero": (export_orders, {"orders": [item(quantity=0)]}, {}, "quantity 0"),
    "bad JSON line": (export_orders, {"file": "q.jsonl"}, {"q.jsonl": "{not json\n"}, "row 1: not valid JSON"),
    "CSV without item columns": (export_orders, {"file": "o.csv"}, {"o.csv": "id,total\n1,2\n"}, "missing CSV column"),
    "currency not ISO": (export_orders, {"orders": [order(currency="EURO")]}, {}, "three-letter ISO code"),
    "unknown status": (export_orders, {"orders": [order(status="lost")]}, {}, "status 'lost'"),
    "customer email": (export_orders, {"orders": [order(customer_email="nobody")]}, {}, "not an e-mail address"),
    "items not a list": (export_orders, {"orders": [order(items="3 mugs")]}, {}, "is not a list"),
    "unknown template": (send_email, {"to": "a@example.com", "template": "nope"}, {}, "'nope.txt' not found"),
    "missing variable": (send_email, {"to": "a@example.com", "template": "welcome", "context": {}}, {}, "undefined"),
    "not an address": (send_email, {"to": "not-an-address", "template": "welcome", "context": WELCOME}, {}, "valid"),
    "header injection": (
        send_email,
        {"to": "a@example.com\r\nBcc: v@example.com", "template": "welcome", "context": WELCOME},
        {},
        "header injection",
    ),
    "text where a number is formatted": (
        send_email,
        {
            "to": "a@example.com",
            "template": "order_confirmation",
            "context": {**ORDER, "order": {**ORDER["order"], "total": "abc"}},
        },
        {},
        "'order_confirmation.txt' line 10",
    ),
    "template name leaving the folder": (send_email, {"to": "a@example.com", "template": "../x"}, {}, "plain name"),
    "subject injection from the context": (
        send_email,
        {"to": "a@example.com", "template": "welcome", "context": {**WELCOME, "customer": {"name": "E\nBcc: v"}}},
        {},
        "header injection",
    ),
    "no recipient": (send_email, {"to": [], "template": "welcome", "context": WELCOME}, {}, "at least one recipient"),
    "a lone surrogate in the context": (
        send_email,
        {"to": "a@example.com", "template": "welcome", "context": {**WELCOME, "customer": {"name": "Zo\ud800"}}},
        {},
        "welcome: the mail would hold U+D800, a lone surrogate",
    ),
    "a lone surrogate in a display name": (
        send_email,
        {"to": "Zo\udceb <zoe@example.com>", "template": "welcome", "context": WELCOME},
        {},
        "welcome: the mail would hold U+DCEB, a lone surrogate",
    ),
    "non-ASCII address, no SMTPUTF8": (
        send_email,
        {"to": "zoë@example.com", "template": "welcome", "context": WELCOME},
        {},
        "zoë@example.com: a non-ASCII local part needs SMTPUTF8",
    ),
}

#: Calls refused in the sender: (actor, positional arguments, keyword arguments, error type, text).
REFUSED_AT_SEND = {
    "unknown keyword": (ping, (), {"payload": 1, "colour": "red"}, InvalidMessage, "unexpected keyword argument"),
    "missing argument": (send_email, (), {"to": "a@example.com"}, InvalidMessage, "missing a required argument"),
    "too many arguments": (ping, (1, 2), {}, InvalidMessage, "too many positional arguments"),
    "not a JSON value": (ping, ({1, 2},), {}, InvalidMessage, "argument 1 is not a JSON value"),
    "a date": (ping, (), {"payload": datetime.date(2026, 1, 1)}, InvalidMessage, "'payload' is not a JSON value"),
    "NaN": (ping, (math.nan,), {}, InvalidMessage, "argument 1 is not a JSON value"),
    "nested past any decoder": (ping, (nested(100_000),), {}, InvalidMessage, "argument 1 is not a JSON value"),
    "an integer past Python's conversion limit": (ping, (10**5000,), {}, InvalidMessage, "argument 1 is not a JSON"),
    "both orders and a file": (export_orders, (), {"orders": [], "file": "x.jsonl"}, InvalidMessage, "give either"),
    "too many inline orders": (export_orders, (), {"orders": [{}] * 1001}, InvalidMessage, "at most 1000"),
    "priority out of range": (ping, (1,), {"priority": 11}, InvalidPriority, "outside 0..10"),
    "export name None": (export_orders, (), {"filter": {}, "name": None}, InvalidMessage, "name must be printable"),
    "export name too long": (export_orders, (), {"filter": {}, "name": "n" * 5000}, InvalidMessage, "1 to 200"),
    "NUL in the export name": (export_orders, (), {"filter": {}, "name": "q3\x00"}, InvalidMessage, "printable"),
    "nested columns": (export_orders, (), {"filter": {}, "columns": [["id"]]}, InvalidMessage, "list of column"),
    "unknown column at send": (export_orders, (), {"filter": {}, "columns": ["colour"]}, InvalidMessage, "colour"),
    "NUL in the file name": (export_orders, (), {"file": "q3\x00.csv"}, InvalidMessage, "file must be a path"),
    "file not a string": (export_orders, (), {"file": ["q3.csv"]}, InvalidMessage, "file must be a path"),
    # The name says it at send: a worker could only fail it.
    "file of no known format": (
        export_orders,
        (),
        {"file": "q3.json"},
        InvalidMessage,
        "file 'q3.json': unknown format; use .jsonl, .ndjson, .csv",
    ),
    "notify not an address": (export_orders, (), {"filter": {}, "notify": "boss"}, InvalidMessage, "notify"),
    # An empty address (a customer record without one) was taken as no notify: no mail, no error.
    "notify empty": (export_orders, (), {"filter": {}, "notify": ""}, InvalidMessage, "notify names no address"),
    "notify an empty list": (
        export_orders,
        (),
        {"filter": {}, "notify": []},
        InvalidMessage,
        "notify names no address",
    ),
    "to a number": (
        send_email,
        (),
        {"to": 12345, "template": "welcome"},
        InvalidMessage,
        "to: 12345 is not an address",
    ),
    "to a mapping": (send_email, (), {"to": {"a": 1}, "template": "welcome"}, InvalidMessage, "is not an address"),
    "cc a number": (send_email, (), {"to": "a@example.com", "template": "welcome", "cc": 7}, InvalidMessage, "cc: 7"),
    "an address in a list not text": (
        send_email,
        (),
        {"to": ["a@example.com", 3], "template": "x"},
        InvalidMessage,
        "to: 3",
    ),
    "template not text": (send_email, (), {"to": "a@example.com", "template": 5}, InvalidMessage, "template name 5"),
    "context not a mapping": (
        send_email,
        (),
        {"to": "a@example.com", "template": "welcome", "context": ["a"]},
        InvalidMessage,
        "context ['a'] is not a mapping",
    ),
    "mail address not valid": (
        send_email,
        (),
        {"to": "not-an-address", "template": "welcome"},
        InvalidMessage,
        "valid",
    ),
    "mail header injection": (
        send_email,
        (),
        {"to": "a@example.com\r\nBcc: v@example.com", "template": "welcome"},
        InvalidMessage,
        "header injection",
    ),
    "mail template leaving the folder": (
        send_email,
        (),
        {"to": "a@example.com", "template": "../x"},
        InvalidMessage,
        "plain name",
    ),
    "mail without recipient": (send_email, (), {"to": [], "template": "welcome"}, InvalidMessage, "at least one"),
    "a lone surrogate": (ping, ("caf\udce9",), {}, InvalidMessage, "argument 1 holds U+DCE9, a lone surrogate"),
    "a lone surrogate in a mail's context": (
        send_email,
        (),
        {"to": "a@example.com", "template": "welcome", "context": {**WELCOME, "customer": {"name": "Zo\ud800"}}},
        InvalidMessage,
        "'context' holds U+D800, a lone surrogate",
    ),
    "a lone surrogate in an address": (
        send_email,
        (),
        {"to": "zo\udceb@example.com", "template": "welcome", "context": WELCOME},
        InvalidMessage,
        "'to' holds U+DCEB",
    ),
    "a lone surrogate in an inline order": (
        export_orders,
        (),
        {"orders": [order(customer_name="M\udcfcller")]},
        InvalidMessage,
        "'orders' holds U+DCFC",
    ),
    "notify with a line break": (
        export_orders,
        (),
        {"filter": {}, "notify": "boss@example.com\u2028Bcc: x@example.com"},
        InvalidMessage,
        "header injection",
    ),
}


@pytest.fixture(scope="module")
def bad_input_worker(amqp, redis_client, tmp_path_factory):
    folders = make_folders(tmp_path_factory.mktemp("bad-input"))
    with running_smtp_server(enable_SMTPUTF8=False) as smtp:
        for queue in (DEFAULT_QUEUE, SLOW_QUEUE):
            flush_queue(queue)
        env = {**export_env(*folders), **mail_env(smtp.port)}
        worker = WorkerProcess([DEFAULT_QUEUE, SLOW_QUEUE], 2, env, ["pipeline.actors", "sample_actors"])
        yield worker, folders, smtp.handler
        worker.discard()


#: Cases of :data:`FAILED_IN_THE_WORKER` that the sender refuses too: published past its checks,
#: as another service might, the worker must still fail them at once.
REFUSED_AT_SEND_TOO = (
    "not an address",
    "header injection",
    "template name leaving the folder",
    "no recipient",
    "a lone surrogate in the context",
    "a lone surrogate in a display name",
    "unknown file format",
)


@pytest.mark.parametrize("case", FAILED_IN_THE_WORKER)
def test_bad_input_fails_at_the_first_attempt_naming_the_problem(case, bad_input_worker, amqp):
    _, (_, imports), inbox = bad_input_worker
    actor, kwargs, files, reason = FAILED_IN_THE_WORKER[case]
    for name, text in files.items():
        (imports / name).write_text(text)
    if case in REFUSED_AT_SEND_TOO:
        message = actor.message_with_options(kwargs=kwargs)
        publish_raw(amqp, message)
    else:
        message = actor.send(**kwargs)
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    record = result.info()
    assert record["state"] == "FAILURE" and record["attempt"] == 1, record
    assert reason in error["message"], error
    assert inbox.mails == []


def job_keys(client) -> list[str]:
    """The keys of job records and their lists, but attempt histories: an earlier test's job
    may still get its history, written after its record with the worker's next writes.
    """
    return [key for key in client.scan_iter(f"{testenv.NAMESPACE}:job:*") if not key.endswith(":attempts")]


@pytest.mark.parametrize("case", REFUSED_AT_SEND)
def test_a_call_that_can_never_run_is_refused_at_send(case, bad_input_worker, amqp, clean_redis):
    actor, args, kwargs, error, reason = REFUSED_AT_SEND[case]
    with pytest.raises(error) as raised:
        actor.send(*args, **kwargs)
    assert reason in str(raised.value)
    assert job_keys(clean_redis) == []


#: Send options refused in the sender: (options, text the error must hold).
REFUSED_OPTIONS = {
    "delay as text": ({"delay": "10"}, "delay '10' is not a number of milliseconds"),
    "delay NaN": ({"delay": math.nan}, "delay nan is not a number of milliseconds"),
    "delay True": ({"delay": True}, "delay True is not a number of milliseconds"),
    "delay past the year 9999": ({"delay": 10**20}, "makes the job due past the year 9999"),
    # Past a float's range (math.isfinite raises), and past the digits Python writes out.
    "delay past a float": ({"delay": 10**400}, "makes the job due past the year 9999"),
    "delay of 5,001 digits": ({"delay": 10**5000}, "delay <an integer of about 5,001 digits> ms makes the job due"),
    "max_retries past a float": ({"max_retries": -(10**400)}, "option max_retries -1000"),
    "max_retries as text": ({"max_retries": "x"}, "ping: option max_retries 'x' is not a whole number of 0 or more"),
    "max_retries a fraction": ({"max_retries": 1.5}, "option max_retries 1.5 is not a whole number"),
    "time_limit negative": ({"time_limit": -1}, "option time_limit -1 is not a number of 1 or more"),
    "min_backoff infinite": ({"min_backoff": math.inf}, "option min_backoff inf is not a number"),
    "max_age past the year 9999": ({"max_age": 10**20}, "option max_age 100000000000000000000 is larger than"),
    "time_limit past the queue's": (
        {"time_limit": 10**9},
        "time_limit 1000000000 ms is longer than any actor of queue 'default' declares",
    ),
    # Dramatiq's callbacks and pipelines, read after the job ran: the job ran, its callback or
    # next step failed with a CRITICAL traceback, and was lost.
    "on_success an actor that takes one argument": (
        {"on_success": "ping"},
        "option on_success names actor 'ping', which cannot take the message and its result",
    ),
    # Dramatiq raised a bare TypeError for it.
    "on_failure a number": ({"on_failure": 5}, "ping: option on_failure 5 is not an actor or an actor's name"),
    # Dramatiq's option for a delayed message's due time: sent on, it failed the record's write
    # with a CRITICAL traceback, and the message went anyway, unrecorded.
    "eta as text": ({"eta": "tomorrow"}, "ping: option eta 'tomorrow' is not a number"),
    "eta past the year 9999": ({"eta": 10**20}, "option eta 100000000000000000000 is larger than"),
    "pipe_ignore as text": ({"pipe_ignore": "yes"}, "option pipe_ignore 'yes' is not true or false"),
    "pipe_target as text": (
        {"pipe_target": "garbage"},
        "step 2 of the pipeline (pipe_target): 'garbage' is not a message",
    ),
    "pipe_target with a field of its own": (
        {"pipe_target": {"x": 1}},
        "step 2 of the pipeline (pipe_target): {'x': 1} is not a message",
    ),
    # An option of the caller's own that is not JSON: the QUEUED record was written, then the
    # body's encoding raised a bare TypeError and nothing was published.
    "an option of one's own, a datetime": (
        {"order_placed": datetime.datetime(2026, 12, 7)},
        "ping: option order_placed is not a JSON value",
    ),
    "an option of one's own, bytes": ({"trace": b"\x00"}, "ping: option trace is not a JSON value"),
    "an option of one's own, NaN": ({"weight": math.nan}, "ping: option weight is not a JSON value"),
}


@pytest.mark.parametrize("case", REFUSED_OPTIONS)
def test_a_send_option_no_worker_could_follow_is_refused_at_send(case, bad_input_worker, clean_redis):
    options, reason = REFUSED_OPTIONS[case]
    with pytest.raises(InvalidMessage) as raised:
        ping.send_with_options(args=(1,), **options)
    assert reason in str(raised.value)
    assert job_keys(clean_redis) == []


def test_send_options_a_worker_can_follow_are_taken(bad_input_worker):
    # A shorter time limit, a fraction of a millisecond, and a delay already past (due at once).
    sent = [
        ping.send_with_options(args=(1,), time_limit=5_000),
        ping.send_with_options(args=(2,), delay=0.5, max_retries=0),
        ping.send_with_options(args=(3,), delay=-5),
    ]
    assert [AsyncResult(m.message_id).get(timeout=20) for m in sent] == [{"pong": 1}, {"pong": 2}, {"pong": 3}]


def publish_raw(amqp, message: dramatiq.Message) -> None:
    """Publish as another service might, past every send-time check."""
    amqp.basic_publish("", message.queue_name, message.encode())


def test_a_raw_message_for_a_longer_actor_of_another_queue_fails_at_once(bad_input_worker, amqp):
    # The workers' consumer-timeout check measures each queue by its own actors: an export (25
    # minutes at most) published to the default queue could run past RabbitMQ's timeout there.
    worker, _, _ = bad_input_worker
    message = dramatiq.Message(
        queue_name=DEFAULT_QUEUE, actor_name="export_orders", args=(), kwargs={"filter": {}}, options={}
    )
    publish_raw(amqp, message)
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    assert result.info()["attempt"] == 1
    assert "actor 'export_orders' runs up to 1500000 ms, longer than any actor of queue 'default'" in error["message"]
    wait_dead_lettered(amqp, message.message_id)
    assert "CRITICAL" not in worker.log


def test_a_raw_message_for_an_unknown_actor_fails_at_once(bad_input_worker, amqp):
    message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="no_such_actor", args=(), kwargs={}, options={})
    publish_raw(amqp, message)
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    assert result.info()["attempt"] == 1 and "no_such_actor" in error["message"]


@pytest.mark.parametrize("args", [(), "not a list"])
def test_a_raw_message_for_an_actor_named_with_a_lone_surrogate_fails_at_once(args, bad_input_worker, amqp):
    # The record's index by actor is keyed by the name, which Redis's JSON decoder refused.
    message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="scan\udcff", args=args, kwargs={}, options={})
    publish_raw(amqp, message)
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    assert result.info()["attempt"] == 1 and "scan\\udcff" in error["message"], error


def test_a_raw_message_for_an_actor_name_no_message_can_carry_fails_at_once_saying_so(bad_input_worker, amqp):
    # No actor can be named so, nor a message be published so (its AMQP type): it was failed as
    # an actor no module declares, and `dlq requeue` then failed on it.
    message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="é" * 128, args=(), kwargs={}, options={})
    publish_raw(amqp, message)
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    assert result.info()["attempt"] == 1 and "is not printable text of 1 to 255 bytes" in error["message"], error


def test_a_raw_message_whose_arguments_do_not_fit_fails_at_once(bad_input_worker, amqp):
    message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=(1, 2, 3), kwargs={}, options={})
    publish_raw(amqp, message)
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    assert result.info()["attempt"] == 1 and "positional argument" in error["message"]


def wait_dead_lettered(amqp, needle: str) -> None:
    """Wait until the default queue's ``.XQ`` holds the message whose id (property or body) is
    ``needle``; what it holds is taken off. A message an earlier test dead-lettered may arrive
    after that test's purge, so the wait is for this message, not for a count.
    """
    seen: list[tuple[pika.BasicProperties, bytes]] = []

    def look() -> bool:
        while True:
            method, properties, body = amqp.basic_get(DEFAULT_QUEUE + ".XQ", auto_ack=True)
            if method is None:
                break
            seen.append((properties, body))
        return any(properties.message_id == needle or needle.encode() in body for properties, body in seen)

    wait_until(look, what=f"message {needle} dead-lettered")


def test_a_raw_message_with_an_id_of_another_form_is_dead_lettered_unrun(bad_input_worker, amqp, clean_redis):
    worker, _, _ = bad_input_worker
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=("x",), kwargs={}, options={})
    body = json.loads(message.encode())
    body["message_id"] = "job:1:done"
    amqp.basic_publish("", DEFAULT_QUEUE, json.dumps(body).encode())
    wait_dead_lettered(amqp, "job:1:done")
    # The worker logs it before it rejects it; the test reads the log a moment later.
    wait_until(lambda: "'job:1:done'" in worker.log and "no job id" in worker.log, what="the dead-letter's log line")
    assert job_keys(clean_redis) == []


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe not even text", b'{"queue_name": "default"', b"[1, 2, 3]"],
    ids=["not UTF-8", "cut JSON", "JSON but no message"],
)
def test_a_body_that_is_not_a_message_fails_its_job_named_by_the_message_id_property(bad_input_worker, amqp, body):
    worker, _, _ = bad_input_worker
    message_id = str(uuid.uuid4())
    properties = pika.BasicProperties(message_id=message_id, type="ping", delivery_mode=2)
    amqp.basic_publish("", DEFAULT_QUEUE, body, properties)
    result = AsyncResult(message_id)
    error = result.get(timeout=20, propagate=False)
    record = result.info()
    assert record["state"] == "FAILURE" and record["attempt"] == 1 and record["actor"] == "ping", record
    assert error["type"] == "pipeline.errors.UndecodableMessage" and "not a valid message" in error["message"]
    wait_until(lambda: f"Job {message_id} failed" in worker.log, what="the failure's log line")
    assert "Failed to decode message" not in worker.log


def test_a_body_that_is_not_a_message_and_has_no_id_is_dead_lettered_with_one_line(bad_input_worker, amqp):
    worker, _, _ = bad_input_worker
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    amqp.basic_publish("", DEFAULT_QUEUE, b"garbage", pika.BasicProperties(message_id="order-17"))
    wait_dead_lettered(amqp, "order-17")
    wait_until(lambda: "'order-17', no job id" in worker.log, what="the dead-letter's log line")
    assert "Failed to decode message" not in worker.log


#: A pipeline's next message, as Dramatiq's ``Message.asdict()`` gives it.
NEXT = {"queue_name": DEFAULT_QUEUE, "actor_name": "ping", "args": [], "kwargs": {}, "options": {}}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("message_timestamp", "yesterday", "message_timestamp 'yesterday' is not a whole number of milliseconds"),
        ("message_timestamp", None, "message_timestamp None is not a whole number"),
        ("options", [], "options [] is not an object"),
        ("kwargs", "x", "kwargs 'x' is not an object"),
        # Dramatiq acknowledges a job on the consumer its body names: one the worker does not
        # run killed the worker thread (a KeyError), another was acknowledged on the wrong
        # channel, and the delivery was held unacknowledged, then came back, for ever.
        ("queue_name", "elsewhere", "queue_name 'elsewhere' is not the queue it was delivered from, 'default'"),
        ("queue_name", SLOW_QUEUE, "queue_name 'slow' is not the queue it was delivered from, 'default'"),
        ("queue_name", DEFAULT_QUEUE + ".DQ", "queue_name 'default.DQ' is not the queue it was delivered from"),
        # Options the middleware read: each of the wrong type ran the job half-wired.
        ("options", {"retries": "x"}, "option retries 'x' is not a whole number of 0 or more"),
        ("options", {"retries": -3}, "option retries -3 is not a whole number of 0 or more"),
        ("options", {"pipeline_redeliveries": 1.5}, "option pipeline_redeliveries 1.5 is not a whole number"),
        ("options", {"eta": "tomorrow"}, "option eta 'tomorrow' is not a number"),
        ("options", {"broker_priority": "high"}, "option broker_priority 'high' is not a whole number"),
        ("options", {"time_limit": "x"}, "option time_limit 'x' is not a number of 1 or more"),
        # Past a float's range: math.isfinite raised OverflowError.
        ("options", {"retries": -(10**400)}, "option retries -1000000"),
        # Numbers past what the middleware's arithmetic or a record's dates hold: the job ran
        # without its time limit (a CRITICAL traceback), or was held in the worker forever.
        ("options", {"time_limit": 10**400}, "option time_limit 1000000"),
        # Longer than the workers' consumer-timeout check measured: a job that ran past
        # RabbitMQ's consumer_timeout was delivered again while it ran, and ran twice at once.
        ("options", {"time_limit": 10**9}, "time_limit 1000000000 ms is longer than any actor of queue 'default'"),
        ("options", {"eta": 10**400}, "option eta 1000000"),
        ("options", {"max_age": 10**20}, "option max_age 100000000000000000000 is larger than 253,402,300,799,999"),
        ("options", {"broker_priority": 256}, "option broker_priority 256 is larger than 255"),
        ("options", {"broker_priority": 2.5}, "option broker_priority 2.5 is not a whole number of 0 or more"),
        ("message_timestamp", 10**400, "message_timestamp 1000000"),
        # Callbacks and pipelines: the job ran, and its callback or next step was lost after.
        (
            "options",
            {"on_success": "no_such_actor"},
            "option on_success names actor 'no_such_actor', which no module this worker imports declares",
        ),
        ("options", {"on_failure": 5}, "option on_failure 5 is not an actor's name"),
        ("options", {"on_retry_exhausted": ""}, "option on_retry_exhausted '' is not an actor's name"),
        ("options", {"on_success": "ping"}, "option on_success names actor 'ping', which cannot take the message"),
        ("options", {"pipe_ignore": "yes"}, "option pipe_ignore 'yes' is not true or false"),
        ("options", {"pipe_target": "garbage"}, "step 2 of the pipeline (pipe_target): 'garbage' is not a message"),
        (
            "options",
            {"pipe_target": NEXT | {"args": "x"}},
            "step 2 of the pipeline (pipe_target): args 'x' is not a list",
        ),
        (
            "options",
            {"pipe_target": NEXT | {"options": {"pipe_target": NEXT | {"options": {"delay": "soon"}}}}},
            "step 3 of the pipeline (pipe_target): option delay 'soon' is not a number",
        ),
    ],
)
def test_a_raw_message_with_a_field_of_the_wrong_type_fails_at_once_with_one_line(
    bad_input_worker, amqp, field, value, reason
):
    worker, _, _ = bad_input_worker
    amqp.queue_purge(DEFAULT_QUEUE + ".XQ")
    message = dramatiq.Message(queue_name=DEFAULT_QUEUE, actor_name="ping", args=("x",), kwargs={}, options={})
    body = {**json.loads(message.encode()), field: value}
    amqp.basic_publish("", DEFAULT_QUEUE, json.dumps(body).encode())
    result = AsyncResult(message.message_id)
    error = result.get(timeout=20, propagate=False)
    record = result.info()
    assert record["state"] == "FAILURE" and record["attempt"] == 1 and record["actor"] == "ping", record
    assert reason in error["message"] and "dead-lettered" in error["message"]
    wait_dead_lettered(amqp, message.message_id)
    wait_until(lambda: reason in worker.log, what="the dead-letter's log line")
    assert "CRITICAL" not in worker.log

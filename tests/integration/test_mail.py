"""send_email through a real worker, RabbitMQ, Redis and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import pytest
from mail_support import WELCOME, mail_env
from services import WorkerProcess, flush_queue
from smtp import DROP_AFTER_DATA, running_smtp_server
from waiting import wait_until

from pipeline.actors import send_email
from pipeline.errors import JobRevoked, PermanentError, SmtpRejected, SmtpUnavailable
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mail_server():
    """One SMTP server for the module's tests; each test starts with an empty inbox."""
    with running_smtp_server() as controller:
        yield controller


@pytest.fixture(scope="module", params=["threads", "gevent"])
def module_worker(request, amqp, redis_client, mail_server):
    """One worker on the default queue for the module, started on an empty queue: every test
    runs against a worker of threads and against one of greenlets (``dramatiq-gevent``, the
    mail worker's default).
    """
    flush_queue(DEFAULT_QUEUE)
    gevent = request.param == "gevent"
    worker = WorkerProcess(
        [DEFAULT_QUEUE], 20 if gevent else 2, mail_env(mail_server.port), ["pipeline.actors", "sample_actors"], gevent
    )
    yield worker
    worker.discard()


@pytest.fixture
def mail_worker(module_worker, mail_server):
    """The shared worker's SMTP inbox, emptied for this test."""
    inbox = mail_server.handler
    inbox.reset()
    return inbox


def test_both_parts_arrive_and_decode_with_unicode_names(mail_worker):
    message = send_email.send(
        to="Zoë Ørsted <zoe@example.com>", cc="王芳 <fang@example.com>", template="welcome", context=WELCOME
    )
    result = AsyncResult(message.message_id).get(timeout=20)
    (mail,) = mail_worker.wait_for(1)
    assert mail["Subject"] == "[Shop] Welcome, Zoë Ørsted"
    assert mail["To"] == "Zoë Ørsted <zoe@example.com>" and mail["Cc"] == "王芳 <fang@example.com>"
    assert mail["Message-ID"] == f"<{message.message_id}@example.com>" == result["message_id"]
    text, html = (part.get_content() for part in mail.iter_parts())
    assert "Hello Zoë Ørsted," in text and "Hello Zoë Ørsted," in html
    assert result["accepted"] == ["zoe@example.com", "fang@example.com"] and result["refused"] == {}
    assert result["template"] == "welcome" and result["duplicate_suppressed"] is False


def test_html_arrives_escaped(mail_worker):
    context = {"customer": {"name": "<script>alert('x')</script>"}, "login_url": "https://x"}
    AsyncResult(send_email.send(to="a@example.com", template="welcome", context=context).message_id).get(timeout=20)
    (mail,) = mail_worker.wait_for(1)
    text, html = (part.get_content() for part in mail.iter_parts())
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "<script>alert('x')</script>" in text


def test_bcc_receives_without_a_header(mail_worker):
    message = send_email.send(to="a@example.com", bcc="hidden@example.com", template="welcome", context=WELCOME)
    AsyncResult(message.message_id).get(timeout=20)
    (mail,) = mail_worker.wait_for(1)
    assert mail_worker.envelopes[0][1] == ["a@example.com", "hidden@example.com"] and "Bcc" not in mail


def test_a_4xx_reply_is_retried_then_delivered(mail_worker):
    mail_worker.script.append("451 4.3.0 Try again later")
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=WELCOME).message_id)
    assert result.get(timeout=30)["accepted"] == ["a@example.com"]
    assert result.info()["attempt"] == 2
    assert len(mail_worker.wait_for(1)) == 1


def test_a_5xx_reply_fails_at_once_and_sends_nothing(mail_worker):
    mail_worker.script.append("554 5.7.1 Rejected as spam")
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=WELCOME).message_id)
    with pytest.raises(SmtpRejected, match=r"554 5\.7\.1 Rejected as spam"):
        result.get(timeout=20)
    assert result.info()["attempt"] == 1 and mail_worker.mails == []


def test_every_recipient_refused_with_5xx_fails(mail_worker):
    result = AsyncResult(send_email.send(to="x@bounce.example.com", template="welcome", context=WELCOME).message_id)
    with pytest.raises(SmtpRejected, match=r"x@bounce\.example\.com: 550"):
        result.get(timeout=20)
    assert mail_worker.mails == []


def test_a_refused_recipient_among_others_is_reported(mail_worker):
    message = send_email.send(to=["ok@example.com", "no@bounce.example.com"], template="welcome", context=WELCOME)
    result = AsyncResult(message.message_id).get(timeout=20)
    assert result["accepted"] == ["ok@example.com"] and result["refused"]["no@bounce.example.com"][0] == 550


def test_a_missing_variable_fails_without_sending(mail_worker):
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context={}).message_id)
    with pytest.raises(PermanentError, match="'customer' is undefined"):
        result.get(timeout=20)
    assert result.info()["attempt"] == 1 and mail_worker.mails == []


def test_header_injection_is_refused_without_sending(mail_worker):
    # Refused by the sender's check, before anything is queued.
    with pytest.raises(PermanentError, match="header injection"):
        send_email.send(to="a@example.com\r\nBcc: victim@example.com", template="welcome", context=WELCOME)
    context = {"customer": {"name": "Eve\r\nBcc: victim@example.com"}, "login_url": "x"}
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=context).message_id)
    with pytest.raises(PermanentError, match=r"subject .*header injection"):
        result.get(timeout=20)
    assert mail_worker.mails == []


def test_the_same_message_processed_twice_sends_one_mail(mail_worker):
    from pipeline.broker import broker

    message = send_email.send(to="a@example.com", template="welcome", context=WELCOME)
    AsyncResult(message.message_id).get(timeout=20)
    broker.enqueue(message)
    marker = send_email.send(to="last@example.com", template="welcome", context=WELCOME)
    AsyncResult(marker.message_id).get(timeout=20)
    assert [to for _, (to, *_) in mail_worker.envelopes] == ["a@example.com", "last@example.com"]


def test_two_copies_of_a_message_in_flight_at_once_send_one_mail(mail_worker):
    from pipeline.broker import broker

    mail_worker.data_delay = 1.0  # the first copy still waits for the server when the second runs
    message = send_email.send(to="a@example.com", template="welcome", context=WELCOME)
    broker.enqueue(message)
    AsyncResult(message.message_id).get(timeout=20)
    marker = send_email.send(to="last@example.com", template="welcome", context=WELCOME)
    AsyncResult(marker.message_id).get(timeout=20)
    assert [to for _, (to, *_) in mail_worker.envelopes] == ["a@example.com", "last@example.com"]


def test_a_connection_lost_after_data_is_not_resent(mail_worker):
    mail_worker.script.append(DROP_AFTER_DATA)
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=WELCOME).message_id)
    with pytest.raises(PermanentError, match="may have taken it"):
        result.get(timeout=30)
    assert len(mail_worker.mails) == 1


def test_a_mail_deferred_on_every_attempt_fails_once_retries_run_out(mail_worker):
    mail_worker.script.extend(["451 4.3.0 Try again later"] * 10)
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=WELCOME).message_id)
    with pytest.raises(SmtpUnavailable, match="451"):
        result.get(timeout=30)
    # The first attempt and PIPELINE_MAIL_MAX_RETRIES (5) retries, then the failure.
    assert result.info()["attempt"] == 6
    assert mail_worker.mails == []


def test_deferred_recipients_are_retried_alone_and_the_others_get_the_mail_once(mail_worker):
    to = ["ok@example.com", "later@defer.example.com", "no@bounce.example.com"]
    result = AsyncResult(send_email.send(to=to, template="welcome", context=WELCOME).message_id)
    outcome = result.get(timeout=30)
    assert outcome["accepted"] == ["ok@example.com", "later@defer.example.com"]
    assert outcome["refused"]["no@bounce.example.com"][0] == 550 and outcome["deferred"] == {}
    assert result.info()["attempt"] == 2
    mail_worker.wait_for(2)
    assert [recipients for _, recipients in mail_worker.envelopes] == [["ok@example.com"], ["later@defer.example.com"]]


def test_the_claim_of_a_mail_waiting_out_its_own_long_backoff_lives_until_the_retry(mail_worker, redis_client):
    # The claim lived PIPELINE_RESULT_TTL and the settings' longest backoff (0.4 s here): a
    # message sent with a backoff of days found it gone when its retry came, and mailed the
    # recipients who already had the mail a second time.
    from pipeline.store.connection import get_redis

    days = 2 * 86_400_000
    to = ["ok@example.com", "later@defer.example.com"]
    message = send_email.send_with_options(
        kwargs={"to": to, "template": "welcome", "context": WELCOME}, min_backoff=days, max_backoff=days
    )
    result = AsyncResult(message.message_id)
    wait_until(lambda: result.state is JobState.RETRY, timeout=20, what="the partly sent mail waiting for its retry")
    keys = get_redis().keys
    record_ttl = redis_client.ttl(keys.record(message.message_id))
    assert record_ttl > 86_400 + get_redis().settings.result_ttl - 60
    assert redis_client.ttl(keys.claim(message.message_id)) >= record_ttl - 5
    assert result.revoke()


def test_a_mail_to_more_recipients_than_the_server_takes_at_once_reaches_each_once(mail_worker):
    # A server that takes 100 recipients per transaction, as RFC 5321 has every one take; the
    # second transaction is deferred, so the job is retried for its recipients and the third's.
    mail_worker.max_recipients = 100
    mail_worker.script.extend(["250 Message accepted", "451 4.3.0 Try again later"])
    to = [f"r{n}@example.com" for n in range(250)]
    result = AsyncResult(send_email.send(to=to[:1], bcc=to[1:], template="welcome", context=WELCOME).message_id)
    outcome = result.get(timeout=30)
    assert sorted(outcome["accepted"]) == sorted(to) and outcome["refused"] == outcome["deferred"] == {}
    assert result.info()["attempt"] == 2
    mail_worker.wait_for(3)
    envelopes = [recipients for _, recipients in mail_worker.envelopes]
    assert envelopes == [to[:100], to[100:200], to[200:]]


def test_an_address_named_twice_is_sent_the_mail_once(mail_worker):
    # Named twice to the server, it may get two copies; in two transactions, it does.
    mail_worker.max_recipients = 2
    result = AsyncResult(
        send_email.send(
            to="a@example.com",
            cc=["a@EXAMPLE.com", "b@example.com"],
            bcc="a@example.com",
            template="welcome",
            context=WELCOME,
        ).message_id
    )
    assert result.get(timeout=20)["accepted"] == ["a@example.com", "b@example.com"]
    mail_worker.wait_for(1)
    assert [recipients for _, recipients in mail_worker.envelopes] == [["a@example.com", "b@example.com"]]


def test_a_mail_revoked_before_it_runs_is_never_sent(module_worker, mail_worker):
    from pipeline.broker import broker

    message = send_email.message(to="a@example.com", template="welcome", context=WELCOME)
    result = AsyncResult(message.message_id)
    assert result.revoke()
    broker.enqueue(message)
    wait_until(
        lambda: any(message.message_id in line and "was skipped" in line for line in module_worker.lines),
        what="the revoked mail skipped",
    )
    with pytest.raises(JobRevoked):
        result.get(timeout=5)
    assert mail_worker.mails == []

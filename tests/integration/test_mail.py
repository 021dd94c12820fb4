"""send_email through a real worker, RabbitMQ, Redis and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import pytest
from smtp import DROP_AFTER_DATA

from pipeline.actors import send_email
from pipeline.claims import Claims
from pipeline.errors import PermanentError, SmtpRejected
from pipeline.mail import Mailer
from pipeline.queues import DEFAULT_QUEUE
from pipeline.records import get_store
from pipeline.results import AsyncResult
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

WELCOME = {"customer": {"name": "Zoë Ørsted"}, "login_url": "https://shop.example/login"}


@pytest.fixture
def mail_env(smtp_server):
    _, port = smtp_server
    return {
        "PIPELINE_SMTP_PORT": str(port),
        "PIPELINE_MAIL_SENDER": "Shop <shop@example.com>",
        "PIPELINE_MAIL_SUBJECT_PREFIX": "[Shop] ",
        "PIPELINE_RETRY_MIN_BACKOFF": "200",
        "PIPELINE_RETRY_MAX_BACKOFF": "400",
    }


@pytest.fixture
def mail_worker(purge, start_worker, mail_env, smtp_server):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=2, env=mail_env)
    return smtp_server[0]


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
    result = AsyncResult(
        send_email.send(to="a@example.com\r\nBcc: victim@example.com", template="welcome", context=WELCOME).message_id
    )
    with pytest.raises(PermanentError, match="header injection"):
        result.get(timeout=20)
    context = {"customer": {"name": "Eve\r\nBcc: victim@example.com"}, "login_url": "x"}
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=context).message_id)
    with pytest.raises(PermanentError, match=r"subject .*header injection"):
        result.get(timeout=20)
    assert mail_worker.mails == []


def test_a_redelivery_after_the_mail_was_accepted_sends_nothing(purge, start_worker, mail_env, smtp_server):
    inbox, port = smtp_server
    purge(DEFAULT_QUEUE)
    message = send_email.send(to="a@example.com", template="welcome", context=WELCOME)
    # A first worker sent the mail and died before recording it or acking the message:
    first = Mailer(Settings(smtp_port=port, mail_sender="Shop <shop@example.com>"), Claims(get_store()))
    first.deliver(message.message_id, to="a@example.com", template="welcome", context=WELCOME)
    assert len(inbox.wait_for(1)) == 1
    start_worker([DEFAULT_QUEUE], env=mail_env)
    result = AsyncResult(message.message_id)
    assert result.get(timeout=20)["duplicate_suppressed"] is True
    assert result.info()["result"]["message_id"] == f"<{message.message_id}@example.com>"
    assert len(inbox.mails) == 1


def test_the_same_message_processed_twice_sends_one_mail(mail_worker):
    from pipeline.broker import broker

    message = send_email.send(to="a@example.com", template="welcome", context=WELCOME)
    AsyncResult(message.message_id).get(timeout=20)
    broker.enqueue(message)
    marker = send_email.send(to="last@example.com", template="welcome", context=WELCOME)
    AsyncResult(marker.message_id).get(timeout=20)
    assert [to for _, (to, *_) in mail_worker.envelopes] == ["a@example.com", "last@example.com"]


def test_a_connection_lost_after_data_is_not_resent(mail_worker):
    mail_worker.script.append(DROP_AFTER_DATA)
    result = AsyncResult(send_email.send(to="a@example.com", template="welcome", context=WELCOME).message_id)
    with pytest.raises(PermanentError, match="may have taken it"):
        result.get(timeout=30)
    assert len(mail_worker.mails) == 1


def test_password_reset_jumps_ahead_of_a_bulk_backlog(purge, start_worker, mail_env, smtp_server):
    inbox, _ = smtp_server
    purge(DEFAULT_QUEUE)
    bulk = send_email.send_many(
        {"to": f"n{i}@example.com", "template": "welcome", "context": WELCOME} for i in range(6)
    )
    order = send_email.send(
        to="order@example.com",
        template="order_confirmation",
        context={"customer": {"name": "A"}, "order": {"id": "1", "currency": "EUR", "total": 1, "items": []}},
    )
    reset = send_email.send(
        to="reset@example.com",
        template="password_reset",
        context={"customer": {"name": "A"}, "reset_url": "https://x", "valid_minutes": 5},
    )
    start_worker([DEFAULT_QUEUE], threads=1, env={**mail_env, "dramatiq_queue_prefetch": "1"})
    for message in [*bulk, order, reset]:
        AsyncResult(message.message_id).get(timeout=30)
    arrived = [to[0] for _, to in inbox.envelopes]
    assert arrived[:2] == ["reset@example.com", "order@example.com"]
    assert sorted(arrived[2:]) == sorted(f"n{i}@example.com" for i in range(6))

"""Mail jobs that need a worker of their own: redelivery after a send, priorities from a backlog."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from mail_support import WELCOME, mail_env
from testenv import make_settings

from pipeline.actors import send_email
from pipeline.mail.mailer import Mailer
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.store.claims import Claims
from pipeline.store.connection import get_redis
from pipeline.store.records import get_store

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("marked", ["at once", "with the next record writes"])
def test_a_redelivery_after_the_mail_was_accepted_sends_nothing(purge, start_worker, smtp_server, marked):
    inbox, port = smtp_server
    purge(DEFAULT_QUEUE)
    message = send_email.send(to="a@example.com", template="welcome", context=WELCOME)
    # A first worker sent the mail and died before recording it or acking the message:
    claims = Claims(get_redis(), get_store().writer if marked != "at once" else None)
    first = Mailer(make_settings(smtp_port=port, mail_sender="Shop <shop@example.com>"), claims)
    first.deliver(message.message_id, to="a@example.com", template="welcome", context=WELCOME)
    assert get_store().flush()  # the writer sends the mark within milliseconds, before the worker died
    assert len(inbox.wait_for(1)) == 1
    start_worker([DEFAULT_QUEUE], env=mail_env(port))
    result = AsyncResult(message.message_id)
    assert result.get(timeout=20)["duplicate_suppressed"] is True
    assert result.info()["result"]["message_id"] == f"<{message.message_id}@example.com>"
    assert len(inbox.mails) == 1


def test_password_reset_jumps_ahead_of_a_bulk_backlog(purge, start_worker, smtp_server):
    inbox, port = smtp_server
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
    start_worker([DEFAULT_QUEUE], threads=1, env={**mail_env(port), "dramatiq_queue_prefetch": "1"})
    for message in [*bulk, order, reset]:
        AsyncResult(message.message_id).get(timeout=30)
    arrived = [to[0] for _, to in inbox.envelopes]
    assert arrived[:2] == ["reset@example.com", "order@example.com"]
    assert sorted(arrived[2:]) == sorted(f"n{i}@example.com" for i in range(6))


def test_template_dirs_override_and_add_templates(purge, start_worker, smtp_server, tmp_path):
    inbox, port = smtp_server
    purge(DEFAULT_QUEUE)
    (tmp_path / "welcome.txt").write_text(
        "{% block subject %}Our own welcome{% endblock %}{% block body %}Hi{% endblock %}"
    )
    (tmp_path / "welcome.html").write_text("<p>Hi</p>")
    (tmp_path / "farewell.txt").write_text(
        "{% block subject %}Bye {{ name }}{% endblock %}{% block body %}Bye{% endblock %}"
    )
    (tmp_path / "farewell.html").write_text("<p>Bye</p>")
    start_worker([DEFAULT_QUEUE], env={**mail_env(port), "PIPELINE_TEMPLATE_DIRS": str(tmp_path)})
    welcome = send_email.send(to="a@example.com", template="welcome", context=WELCOME)
    farewell = send_email.send(to="b@example.com", template="farewell", context={"name": "Sam"})
    for message in (welcome, farewell):
        AsyncResult(message.message_id).get(timeout=20)
    subjects = sorted(mail["Subject"] for mail in inbox.wait_for(2))
    assert subjects == ["[Shop] Bye Sam", "[Shop] Our own welcome"]


@pytest.mark.parametrize("claimed", ["each on its own", "through the record writer"])
def test_two_copies_of_a_mail_job_in_flight_at_once_send_one_mail(smtp_server, clean_redis, claimed):
    inbox, port = smtp_server
    inbox.data_delay = 1.0
    settings = make_settings(smtp_port=port, mail_sender="Shop <shop@example.com>")
    job = str(uuid.uuid4())
    outcomes = []

    def deliver() -> None:
        # Each copy runs in a worker thread of its own, with its own SMTP connection.
        mailer = Mailer(settings, Claims(get_redis(), get_store().writer if claimed != "each on its own" else None))
        outcomes.append(mailer.deliver(job, to="a@example.com", template="welcome", context=WELCOME))

    copies = [threading.Thread(target=deliver) for _ in range(2)]
    for copy in copies:
        copy.start()
        time.sleep(0.2)  # the second copy arrives while the first waits for the server
    for copy in copies:
        copy.join(30)
    assert len(inbox.wait_for(1)) == 1
    assert sorted(outcome["duplicate_suppressed"] for outcome in outcomes) == [False, True]
    assert len(inbox.mails) == 1


def test_a_mail_worker_on_greenlets_stopped_mid_backlog_loses_and_doubles_no_mail(purge, start_worker, smtp_server):
    inbox, port = smtp_server
    inbox.data_delay = 0.3  # a slow relay: mails are mid-conversation when the worker stops
    purge(DEFAULT_QUEUE)
    sent = send_email.send_many(
        {"to": f"g{i}@example.com", "template": "welcome", "context": WELCOME} for i in range(60)
    )
    env = {**mail_env(port), "PIPELINE_SHUTDOWN_GRACE": "5"}
    first = start_worker([DEFAULT_QUEUE], threads=20, env=env, gevent=True)
    inbox.wait_for(5, timeout=20)
    first.stop()
    assert first.process.returncode == 0, first.log[-3000:]
    assert len(inbox.mails) < 60  # the rest went back to the queue
    start_worker([DEFAULT_QUEUE], threads=20, env=env, gevent=True)
    for message in sent:
        assert AsyncResult(message.message_id).get(timeout=30)["accepted"]
    time.sleep(1)
    recipients = sorted(str(mail["To"]) for mail in inbox.mails)
    assert recipients == sorted(f"g{i}@example.com" for i in range(60))

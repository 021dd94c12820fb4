"""SmtpSender against a real SMTP server: connection reuse, reconnection, reply codes."""

from __future__ import annotations

import threading
import time

import pytest
from ports import free_port
from smtp import running_smtp_server

from pipeline.errors import SmtpRejected, SmtpUnavailable
from pipeline.mail.message import build_message
from pipeline.mail.rendering import Rendered
from pipeline.mail.smtp import SmtpSender
from pipeline.settings import Settings


def envelope(settings: Settings, to: str = "a@example.com", job: str = "job"):
    return build_message(Rendered("Hi", "text", "<p>html</p>"), settings=settings, message_id=job, to=to)


@pytest.fixture
def settings(smtp_server) -> Settings:
    return Settings(smtp_port=smtp_server[1], mail_sender="Shop <shop@example.com>")


def test_mails_reuse_a_kept_connection(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(settings)
    for i in range(3):
        sender.send(envelope(settings, job=str(i)))
    assert len(inbox.wait_for(3)) == 3 and inbox.connections == 1
    sender.close()


def test_without_reuse_every_mail_opens_a_connection(smtp_server):
    inbox, port = smtp_server
    settings = Settings(smtp_port=port, smtp_reuse_connection=False)
    sender = SmtpSender(settings)
    for i in range(3):
        sender.send(envelope(settings, job=str(i)))
    assert inbox.connections == 3


def test_a_connection_the_server_dropped_is_reopened_and_the_mail_sent(smtp_controller, settings):
    inbox = smtp_controller.handler
    sender = SmtpSender(settings)
    sender.send(envelope(settings, job="1"))
    inbox.drop_connections(smtp_controller.loop)
    sender.send(envelope(settings, job="2"))
    assert [m["Message-ID"] for m in inbox.wait_for(2)] == ["<1@example.com>", "<2@example.com>"]
    assert inbox.connections == 2
    sender.close()


def test_a_4xx_reply_is_transient(smtp_server, settings):
    smtp_server[0].script.append("452 4.3.1 Insufficient storage")
    with pytest.raises(SmtpUnavailable, match="452"):
        SmtpSender(settings).send(envelope(settings))


def test_a_5xx_reply_is_permanent(smtp_server, settings):
    smtp_server[0].script.append("552 5.3.4 Message too big")
    with pytest.raises(SmtpRejected, match="552"):
        SmtpSender(settings).send(envelope(settings))


def test_a_server_that_is_down_is_transient_and_named():
    settings = Settings(smtp_port=free_port(), smtp_timeout=2)
    with pytest.raises(SmtpUnavailable, match=r"127\.0\.0\.1:\d+ unreachable"):
        SmtpSender(settings).send(envelope(settings))


def test_tls_with_login_delivers(tls_smtp):
    inbox, options = tls_smtp
    settings = Settings(mail_sender="Shop <shop@example.com>", **options)
    sender = SmtpSender(settings)
    sender.send(envelope(settings, job="1"))
    sender.send(envelope(settings, job="2"))
    assert len(inbox.wait_for(2)) == 2 and inbox.connections == 1
    sender.close()


def test_a_wrong_password_is_permanent(tls_smtp):
    _, options = tls_smtp
    settings = Settings(**{**options, "smtp_password": "wrong"})
    with pytest.raises(SmtpRejected, match="login as 'shop' refused: 535"):
        SmtpSender(settings).send(envelope(settings))


def test_a_certificate_from_an_unknown_ca_is_refused(tls_smtp):
    inbox, options = tls_smtp
    settings = Settings(**{**options, "smtp_ca_file": None})
    with pytest.raises(SmtpUnavailable, match=r"127\.0\.0\.1:\d+ unreachable"):
        SmtpSender(settings).send(envelope(settings))
    assert inbox.mails == []


def test_a_recipient_that_cannot_be_encoded_fails_for_good_and_leaves_the_connection_clean(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(settings)
    sender.send(envelope(settings, job="1"))
    bad = envelope(settings, job="2")
    bad.recipients.append("zoë@example.com")  # past the message's own checks, as a Bcc would be
    with pytest.raises(SmtpRejected, match="SMTPUTF8"):
        sender.send(bad)
    # The next, unrelated mail on the same thread's connection goes out (no "nested MAIL").
    sender.send(envelope(settings, to="b@example.com", job="3"))
    assert [m["Message-ID"] for m in inbox.wait_for(2)] == ["<1@example.com>", "<3@example.com>"]
    assert inbox.connections == 1
    sender.close()


def test_a_non_ascii_address_goes_out_with_smtputf8_when_the_server_offers_it(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(settings)
    sender.send(envelope(settings, to="Zoë <zoë@bücher.example>"))
    inbox.wait_for(1)
    assert inbox.envelopes == [("shop@example.com", ["zoë@xn--bcher-kva.example"])]
    assert "To: Zoë <zoë@xn--bcher-kva.example>".encode() in inbox.raw[0]
    sender.close()


def test_a_non_ascii_address_fails_at_once_naming_it_when_the_server_lacks_smtputf8():
    with running_smtp_server(enable_SMTPUTF8=False) as controller:
        settings = Settings(smtp_port=controller.port, mail_sender="Shop <shop@example.com>")
        with pytest.raises(SmtpRejected, match=r"zoë@example\.com: a non-ASCII local part needs SMTPUTF8"):
            SmtpSender(settings).send(envelope(settings, to="zoë@example.com"))
        assert controller.handler.mails == []


def test_without_pipelining_the_envelope_goes_command_by_command(smtp_server, settings):
    inbox, _ = smtp_server
    inbox.pipelining = False
    sender = SmtpSender(settings)
    refused = sender.send(envelope(settings, to="Ann <a@example.com>, no@bounce.example.com"))
    assert refused == {"no@bounce.example.com": (550, "5.1.1 No such user")}
    assert inbox.envelopes == [("shop@example.com", ["a@example.com"])]
    sender.close()


def test_a_pipelined_envelope_whose_recipients_are_all_refused_sends_no_data(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(settings)
    with pytest.raises(SmtpRejected, match="every recipient refused"):
        sender.send(envelope(settings, to="x@bounce.example.com, y@bounce.example.com"))
    # The connection is clean for the next mail, sent on it.
    sender.send(envelope(settings, to="a@example.com", job="next"))
    assert [m["Message-ID"] for m in inbox.wait_for(1)] == ["<next@example.com>"] and inbox.connections == 1
    sender.close()


def test_a_line_starting_with_a_dot_survives_a_pipelined_send(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(settings)
    sender.send(
        build_message(Rendered("Hi", ".\n..two\n.", "<p>.</p>"), settings=settings, message_id="j", to="a@example.com")
    )
    (mail,) = inbox.wait_for(1)
    assert mail.get_body(("plain",)).get_content().replace("\r\n", "\n").startswith(".\n..two\n.")
    sender.close()


def test_threads_share_a_bounded_pool_of_connections(smtp_server):
    inbox, port = smtp_server
    settings = Settings(smtp_port=port, smtp_max_connections=3, mail_sender="Shop <shop@example.com>")
    sender = SmtpSender(settings)
    threads = [
        threading.Thread(target=lambda n=n: [sender.send(envelope(settings, job=f"{n}-{i}")) for i in range(5)])
        for n in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(inbox.wait_for(60)) == 60
    # Twelve threads, three connections at most, every one of them reused.
    assert sender.opened <= 3 and inbox.connections == sender.opened
    sender.close()


def test_a_relay_that_closed_idle_connections_costs_one_reconnect_each_not_a_mail(smtp_controller, settings):
    inbox = smtp_controller.handler
    sender = SmtpSender(settings)
    both = [threading.Thread(target=sender.send, args=(envelope(settings, job=f"warm-{n}"),)) for n in range(2)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join(10)
    opened = sender.opened
    inbox.drop_connections(smtp_controller.loop)
    for n in range(4):
        sender.send(envelope(settings, job=f"after-{n}"))
    assert len(inbox.wait_for(6)) == 6
    assert sender.opened == opened + 1
    sender.close()


def test_before_data_runs_once_the_envelope_is_taken_and_before_the_content(smtp_server, settings):
    inbox, _ = smtp_server
    seen: list[int] = []
    sender = SmtpSender(settings)
    sender.send(envelope(settings, to="c@example.com"), before_data=lambda: seen.append(len(inbox.mails)))
    assert seen == [0] and len(inbox.wait_for(1)) == 1
    # A mail every recipient refuses never reaches its content: nothing is called, no slot taken.
    with pytest.raises(SmtpRejected, match="550"):
        sender.send(envelope(settings, to="x@bounce.example.com"), before_data=lambda: seen.append(-1))
    assert seen == [0]
    sender.close()


def test_a_failure_before_the_content_sends_nothing_and_closes_the_open_transaction(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(settings)

    def stopped() -> None:
        raise TimeoutError("the job's time ran out while it waited for its slot")

    began = time.monotonic()
    with pytest.raises(TimeoutError):
        sender.send(envelope(settings, job="stopped"), before_data=stopped)
    # The open connection is closed, not asked to QUIT: in DATA, the server would read the QUIT
    # as the mail's content and answer nothing, and the job would wait out the SMTP timeout.
    assert time.monotonic() - began < settings.smtp_timeout / 2
    sender.send(envelope(settings, job="next"))
    # The connection whose transaction was left open is not reused: the next mail opened another.
    assert [m["Message-ID"] for m in inbox.wait_for(1)] == ["<next@example.com>"] and inbox.connections == 2
    sender.close()


def many(count: int) -> list[str]:
    return [f"r{n}@example.com" for n in range(count)]


def test_a_mail_to_more_recipients_than_a_transaction_takes_goes_in_several(smtp_server, settings):
    # A server that takes 100 recipients per transaction, as RFC 5321 has every one take.
    inbox, _ = smtp_server
    inbox.max_recipients = 100
    sender = SmtpSender(settings)
    message = build_message(Rendered("Hi", "text", "<p>html</p>"), settings=settings, message_id="m", to=many(250))
    paced = []
    assert sender.send(message, before_data=lambda: paced.append(1)) == {}
    inbox.wait_for(3)
    assert [recipients for _, recipients in inbox.envelopes] == [many(250)[:100], many(250)[100:200], many(250)[200:]]
    assert len(paced) == 3 and len({mail["Message-ID"] for mail in inbox.mails}) == 1
    sender.close()


def test_a_transaction_that_fails_after_another_delivered_returns_its_recipients_refused(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(Settings(smtp_port=settings.smtp_port, mail_sender=settings.mail_sender, smtp_max_recipients=2))
    inbox.script.extend(["250 OK", "554 5.7.1 Content refused", "250 OK", "451 4.3.0 Try again later"])
    message = build_message(Rendered("Hi", "text", "<p>html</p>"), settings=settings, message_id="m", to=many(9))
    refused = sender.send(message)
    # The first and third transactions delivered; the second was refused for good; the fourth
    # for now, with the fifth, which was not made: a later attempt sends to those three alone.
    assert [recipients for _, recipients in inbox.envelopes] == [many(9)[0:2], many(9)[4:6]]
    assert {address: code for address, (code, _) in refused.items()} == {
        **dict.fromkeys(many(9)[2:4], 554),
        **dict.fromkeys(many(9)[6:], 451),
    }
    assert "Content refused" in refused["r2@example.com"][1] and "Try again later" in refused["r8@example.com"][1]
    sender.close()


def test_a_first_transaction_that_fails_fails_the_mail(smtp_server, settings):
    inbox, _ = smtp_server
    sender = SmtpSender(Settings(smtp_port=settings.smtp_port, mail_sender=settings.mail_sender, smtp_max_recipients=2))
    inbox.script.append("451 4.3.0 Try again later")
    message = build_message(Rendered("Hi", "text", "<p>html</p>"), settings=settings, message_id="m", to=many(5))
    with pytest.raises(SmtpUnavailable, match="451"):
        sender.send(message)
    assert inbox.envelopes == []
    sender.close()

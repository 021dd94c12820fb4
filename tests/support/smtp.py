"""A real SMTP server for the tests: aiosmtpd on a free port, with scripted refusals."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from ports import free_port
from waiting import wait_for_arrivals

#: Reply to DATA that makes the server drop the connection after taking the mail.
DROP_AFTER_DATA = "drop"


class Inbox:
    """The aiosmtpd handler: keeps every mail it accepts and answers DATA as scripted.

    Push replies onto ``script`` (e.g. ``"451 4.3.0 Try again later"``) and the next DATA
    commands get them instead of ``250``; ``DROP_AFTER_DATA`` keeps the mail and drops the
    connection without a reply. Recipients at ``bounce.example.com`` are refused with 550;
    recipients at ``defer.example.com`` get 451 the first time they are named, then are taken.
    """

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        #: The mails as they came over the wire.
        self.raw: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.script: deque[str] = deque()
        self.servers: list = []
        self.arrived = threading.Condition()
        self.deferred: set[str] = set()
        #: Seconds the server takes to answer DATA, as a slow server does.
        self.data_delay = 0.0
        #: Whether EHLO offers PIPELINING (RFC 2920), as most servers do.
        self.pipelining = True
        #: Answer MAIL with a 421 ("too many connections") on every n-th connection (0: never).
        self.throttle_every = 0
        self.throttled = 0
        #: Recipients one transaction may name at most (0: any number), as most servers bound
        #: them: past it, a recipient gets 452.
        self.max_recipients = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if all(known is not server for known in self.servers):
            self.servers.append(server)
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands one by one from the stream, so it serves pipelined
            # commands as they come; it just does not say so.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if all(known is not server for known in self.servers):
            self.servers.append(server)
        position = next(n for n, known in enumerate(self.servers, 1) if known is server)
        if self.throttle_every and position % self.throttle_every == 0:
            self.throttled += 1
            return "421 4.7.0 Too many connections, slow down"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@bounce.example.com"):
            return "550 5.1.1 No such user"
        if address.endswith("@defer.example.com") and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.2.1 Mailbox busy, try later"
        if self.max_recipients and len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        reply = self.script.popleft() if self.script else "250 Message accepted"
        if reply.startswith("250") or reply == DROP_AFTER_DATA:
            with self.arrived:
                self.raw.append(envelope.content)
                self.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                self.arrived.notify_all()
        if reply == DROP_AFTER_DATA:
            server.transport.close()
            return "250 never sent"
        return reply

    def reset(self) -> None:
        """Forget the mails received and the replies scripted (for a server shared by tests)."""
        with self.arrived:
            self.mails.clear()
            self.raw.clear()
            self.envelopes.clear()
            self.script.clear()
            self.deferred.clear()
        self.data_delay = 0.0
        self.max_recipients = 0

    @property
    def connections(self) -> int:
        """How many connections clients opened (one server protocol object each)."""
        return len(self.servers)

    def drop_connections(self, loop) -> None:
        """Close every client connection from the server's side, as an idle timeout would."""
        for server in self.servers:
            loop.call_soon_threadsafe(server.transport.close)
        time.sleep(0.2)

    def wait_for(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        """Block until ``count`` mails arrived; return them all."""
        wait_for_arrivals(self.arrived, self.mails, count, timeout)
        return list(self.mails)


@contextlib.contextmanager
def running_smtp_server(hostname: str = "127.0.0.1", **options: object) -> Iterator[Controller]:
    """A real SMTP server (aiosmtpd) on ``hostname`` and a free port, stopped when the block ends.

    Its handler, an :class:`Inbox`, is ``controller.handler``; ``options`` go to aiosmtpd (it
    offers SMTPUTF8 unless ``enable_SMTPUTF8=False``).
    """
    controller = Controller(Inbox(), hostname=hostname, port=free_port(), decode_data=False, **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def smtp_controller() -> Iterator[Controller]:
    """A real SMTP server of the test's own (see :func:`running_smtp_server`)."""
    with running_smtp_server() as controller:
        yield controller


@pytest.fixture
def smtp_server(smtp_controller: Controller) -> tuple[Inbox, int]:
    """The test SMTP server's inbox and port."""
    return smtp_controller.handler, smtp_controller.port


#: The user and password the TLS test servers accept.
SMTP_LOGIN = ("shop", "s3cret-pass")


def _authenticate(server, session, envelope, mechanism, auth_data):
    valid = (auth_data.login.decode(), auth_data.password.decode()) == SMTP_LOGIN
    return AuthResult(success=valid, handled=False)


@pytest.fixture(scope="session")
def smtp_ca():
    """A throwaway CA and a certificate for 127.0.0.1 it signed."""
    ca = trustme.CA()
    return ca, ca.issue_cert("127.0.0.1")


@pytest.fixture(params=["starttls", "ssl"])
def tls_smtp(request, smtp_ca, tmp_path) -> Iterator[tuple[Inbox, dict[str, object]]]:
    """A real SMTP server that needs TLS (STARTTLS, or TLS from the first byte) and a login.

    Yields its inbox and the ``PIPELINE_SMTP_*`` settings that reach it.
    """
    ca, cert = smtp_ca
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    inbox = Inbox()
    port = free_port()
    # aiosmtpd does not count TLS from the first byte as TLS for AUTH, hence no auth_require_tls.
    options = {"authenticator": _authenticate, "auth_require_tls": request.param == "starttls"}
    if request.param == "starttls":
        controller = Controller(
            inbox, hostname="127.0.0.1", port=port, tls_context=server_context, require_starttls=True, **options
        )
    else:
        controller = Controller(inbox, hostname="127.0.0.1", port=port, ssl_context=server_context, **options)
    controller.start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield (
        inbox,
        {
            "smtp_port": port,
            "smtp_security": request.param,
            "smtp_ca_file": ca_file,
            "smtp_user": SMTP_LOGIN[0],
            "smtp_password": SMTP_LOGIN[1],
        },
    )
    controller.stop()

"""SMTP delivery: one connection per worker thread, kept open, and every reply sorted.

Connection trouble, timeouts and 4xx replies are :class:`~pipeline.errors.SmtpUnavailable`
(worth retrying; nothing was delivered); 5xx replies are :class:`~pipeline.errors.SmtpRejected`;
a connection that broke once the mail's data was on its way is
:class:`~pipeline.errors.DeliveryUncertain`, so that nobody sends it again.
"""

from __future__ import annotations

import email.policy
import re
import smtplib
import ssl
import threading
import time

from pipeline.errors import DeliveryUncertain, PipelineError, SmtpRejected, SmtpUnavailable
from pipeline.mail.message import Envelope
from pipeline.settings import Settings

#: The reply that lets the client send a mail's content after DATA.
DATA_GO_AHEAD = 354
#: A dot at the start of a line, which DATA doubles so that it does not end the content.
DOT_AT_LINE_START = re.compile(rb"(?m)^\.")
#: Seconds a reused SMTP connection may sit idle before it is checked with NOOP first.
IDLE_CHECK_AFTER = 5.0
#: How a message is written for SMTP: the ``email.mime`` classes' policy, with CRLF line ends.
_WIRE_POLICY = email.policy.compat32.clone(linesep="\r\n")
#: How a message with a non-ASCII address is written: headers in UTF-8, for SMTPUTF8.
_UTF8_WIRE_POLICY = email.policy.SMTPUTF8.clone(linesep="\r\n")


class SmtpSender:
    """Delivers messages over SMTP, one connection per thread, kept open between mails.

    A connection idle for a while is checked with NOOP before use, and a server that dropped
    it is reconnected to, so reuse never costs a mail.

    Parameters:
      settings: Host, port, security, credentials, timeout and whether to reuse connections.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.smtp_security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            smtp.ehlo()
            if s.smtp_security == "starttls":
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
        except smtplib.SMTPNotSupportedError as exc:
            raise SmtpRejected(
                f"SMTP server {s.smtp_host}:{s.smtp_port} cannot do what the settings ask: {exc}"
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            reply = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            raise SmtpRejected(f"SMTP login as {s.smtp_user!r} refused: {reply}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise SmtpUnavailable(f"SMTP server {s.smtp_host}:{s.smtp_port} unreachable: {exc!r}") from exc
        return smtp

    def check(self) -> None:
        """Connect, greet, upgrade to TLS and log in as the settings say, then hang up.

        Raises:
          SmtpUnavailable: The server cannot be reached, or TLS failed.
          SmtpRejected: The server cannot do what the settings ask, or refused the login.
        """
        smtp = self._connect()
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()

    def _tls_context(self) -> ssl.SSLContext:
        ca_file = self.settings.smtp_ca_file
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def _connection(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        if smtp is not None and time.monotonic() - self._local.used > IDLE_CHECK_AFTER:
            try:
                if smtp.noop()[0] != 250:
                    raise smtplib.SMTPServerDisconnected("NOOP refused")
            except (OSError, smtplib.SMTPException):
                self.close()
                smtp = None
        if smtp is None:
            smtp = self._local.smtp = self._connect()
        self._local.used = time.monotonic()
        return smtp

    def close(self) -> None:
        """Close this thread's connection, if open."""
        smtp = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def send(self, envelope: Envelope) -> dict[str, tuple[int, str]]:
        """Deliver ``envelope``.

        A reused connection the server dropped is reopened once and the mail sent on the new
        one: up to the DATA command nothing was delivered, so that repeats nothing.

        Returns:
          The recipients the server refused while accepting the mail for others.

        Raises:
          SmtpRejected: A 5xx reply: the sender, every recipient or the data refused.
          SmtpUnavailable: No connection, a timeout or a 4xx reply, before the data was sent.
          DeliveryUncertain: The connection broke after the data was sent.
        """
        reused = getattr(self._local, "smtp", None) is not None
        smtp = self._connection()
        try:
            refused = self._transmit(smtp, envelope)
        except _BeforeData as exc:
            self.close()
            if not reused:
                raise SmtpUnavailable(f"SMTP server {self.settings.smtp_host} failed: {exc.__cause__!r}") from exc
            try:
                refused = self._transmit(self._connection(), envelope)
            except _BeforeData as again:
                self.close()
                raise SmtpUnavailable(f"SMTP server {self.settings.smtp_host} failed: {again.__cause__!r}") from again
        if not self.settings.smtp_reuse_connection:
            self.close()
        return refused

    def _transmit(self, smtp: smtplib.SMTP, envelope: Envelope) -> dict[str, tuple[int, str]]:
        """Run MAIL, RCPT and DATA one by one.

        smtplib's ``sendmail`` does the same, but does not say whether a broken connection broke
        before the data was sent or after.
        """
        data = envelope.message.as_bytes(policy=_UTF8_WIRE_POLICY if envelope.smtputf8 else _WIRE_POLICY)
        try:
            smtp.ehlo_or_helo_if_needed()
            options: list[str] = []
            if envelope.smtputf8:
                if not smtp.has_extn("smtputf8"):
                    wide = [a for a in [envelope.sender, *envelope.recipients] if not a.isascii()]
                    raise SmtpRejected(
                        f"{', '.join(wide)}: a non-ASCII local part needs SMTPUTF8, which "
                        f"{self.settings.smtp_host}:{self.settings.smtp_port} does not offer"
                    )
                options.append("SMTPUTF8")
            (code, reply), recipient_replies, data_reply = self._envelope(smtp, envelope, options)
            if code != 250:
                self._reject(smtp, code, reply, f"sender {envelope.sender!r} refused")
            refused = {}
            for recipient, (code, reply) in zip(envelope.recipients, recipient_replies, strict=True):
                if code not in (250, 251):
                    refused[recipient] = (code, _text(reply))
            if len(refused) == len(envelope.recipients):
                detail = "; ".join(f"{a}: {c} {m}" for a, (c, m) in refused.items())
                permanent = all(c >= 500 for c, _ in refused.values())
                self._reset(smtp)
                error = SmtpRejected if permanent else SmtpUnavailable
                raise error(f"every recipient refused{'' if permanent else ' for now'}: {detail}")
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise _BeforeData from exc
        except PipelineError:
            raise
        except BaseException as exc:
            # Anything else between MAIL and DATA leaves a transaction open on the kept
            # connection: end it before this thread sends anything else.
            self._reset(smtp)
            if isinstance(exc, UnicodeError):
                raise SmtpRejected(
                    f"an address of the mail cannot be sent to {self.settings.smtp_host} ({exc}): a non-ASCII "
                    "local part needs SMTPUTF8"
                ) from exc
            raise
        if data_reply is not None and data_reply[0] != DATA_GO_AHEAD:
            self._reject(smtp, data_reply[0], data_reply[1], "data refused")
        try:
            if data_reply is None:
                code, reply = smtp.data(data)
            else:
                # DATA was sent with the envelope and the server said go ahead: the content now.
                smtp.send(_dot_stuffed(data))
                code, reply = smtp.getreply()
        except smtplib.SMTPDataError as exc:
            self._reject(smtp, exc.smtp_code, exc.smtp_error, "data refused")
        except BaseException as exc:
            # Anything that stops the DATA exchange midway (a broken connection, a timeout, the
            # job's time limit) leaves unknown whether the server took the mail.
            self._local.smtp = None
            raise DeliveryUncertain(
                f"the connection to {self.settings.smtp_host} broke while the mail was sent ({exc!r}): "
                "the server may have taken it, so it is not sent again"
            ) from exc
        if code != 250:
            self._reject(smtp, code, reply, "data refused")
        return refused

    @staticmethod
    def _envelope(
        smtp: smtplib.SMTP, envelope: Envelope, options: list[str]
    ) -> tuple[tuple[int, bytes], list[tuple[int, bytes]], tuple[int, bytes] | None]:
        """Send MAIL and every RCPT, and DATA too where the server offers ``PIPELINING``.

        With PIPELINING (RFC 2920) the commands go in one write and their replies are read in
        order: one round trip for the whole envelope instead of one per command, which is most of
        what a mail costs across a network.

        Returns:
          The MAIL reply, each RCPT reply, and the DATA reply (None when DATA was not sent).
        """
        if not smtp.has_extn("pipelining"):
            mail = smtp.mail(envelope.sender, options)
            if mail[0] != 250:
                return mail, [], None
            return mail, [smtp.rcpt(recipient) for recipient in envelope.recipients], None
        if "SMTPUTF8" in options:
            smtp.command_encoding = "utf-8"
        commands = [f"MAIL FROM:{smtplib.quoteaddr(envelope.sender)}{''.join(' ' + o for o in options)}"]
        commands += [f"RCPT TO:{smtplib.quoteaddr(recipient)}" for recipient in envelope.recipients]
        smtp.send("".join(command + "\r\n" for command in [*commands, "DATA"]))
        replies = [smtp.getreply() for _ in range(len(commands) + 1)]
        return replies[0], replies[1:-1], replies[-1]

    def _reject(self, smtp: smtplib.SMTP, code: int, reply: bytes | str, what: str) -> None:
        self._reset(smtp)
        if code >= 500:
            raise SmtpRejected(f"SMTP server: {what}: {code} {_text(reply)}")
        raise SmtpUnavailable(f"SMTP server deferred the mail: {what}: {code} {_text(reply)}")

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self.close()


def _dot_stuffed(data: bytes) -> bytes:
    """A message's content as DATA sends it: a leading dot doubled, ended by a lone dot."""
    stuffed = DOT_AT_LINE_START.sub(b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class _BeforeData(Exception):
    """The connection broke before the DATA command: nothing was delivered."""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

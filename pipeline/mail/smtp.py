"""SMTP delivery: a bounded pool of connections per process, kept open, and every reply sorted.

A worker process's threads share at most ``PIPELINE_SMTP_MAX_CONNECTIONS`` connections: a mail
takes an idle one (the most recently used, so that a relay's idle timeout closes the others),
or opens one while the pool is below its bound, or waits for one. A connection whose
transaction failed is reset (RSET) before it goes back, or closed when that fails.

Connection trouble, timeouts and 4xx replies are :class:`~pipeline.errors.SmtpUnavailable`
(worth retrying; nothing was delivered); 5xx replies are :class:`~pipeline.errors.SmtpRejected`;
a connection that broke once the mail's data was on its way is
:class:`~pipeline.errors.DeliveryUncertain`, so that nobody sends it again.
"""

from __future__ import annotations

import dataclasses
import email.policy
import itertools
import queue
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import DeliveryUncertain, PipelineError, SmtpRejected, SmtpThrottled, SmtpUnavailable
from pipeline.mail.message import Envelope
from pipeline.settings import Settings

#: The reply that lets the client send a mail's content after DATA.
DATA_GO_AHEAD = 354
#: A dot at the start of a line, which DATA doubles so that it does not end the content.
DOT_AT_LINE_START = re.compile(rb"(?m)^\.")
#: Seconds a reused SMTP connection may sit idle before it is checked with NOOP first.
IDLE_CHECK_AFTER = 5.0
#: The reply code a recipient is given when a transaction of a mail sent in several failed for
#: good (5xx) or for now (4xx) after an earlier one delivered it: the failure's text goes with it.
PART_REFUSED = 554
PART_DEFERRED = 451
#: Recipients an error message lists at most.
LISTED_AT_MOST = 10


class WirePolicy(email.policy.Compat32):
    """How a message is written for SMTP: the ``email.mime`` classes' policy (compat32), with
    CRLF line ends. A header that is short, printable ASCII is written as it is, which is what
    compat32's folding makes of it, without the ``Header`` object it builds for every header
    (most of the time a mail takes to write).
    """

    def fold_binary(self, name: str, value: Any) -> bytes:
        """``name: value`` and the line end, folded as compat32 folds it."""
        if (
            type(value) is str
            and value.isascii()
            and value.isprintable()
            and len(name) + len(value) + 2 <= (self.max_line_length or 0)
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_WIRE_POLICY = WirePolicy(linesep="\r\n")
#: How a message with a non-ASCII address is written: headers in UTF-8, for SMTPUTF8.
_UTF8_WIRE_POLICY = email.policy.SMTPUTF8.clone(linesep="\r\n")


class _Lease:
    """A connection taken from the pool for one mail; ``broken`` once it must not be reused."""

    def __init__(self, smtp: smtplib.SMTP, reused: bool) -> None:
        self.smtp = smtp
        self.reused = reused
        self.broken = False


class SmtpSender:
    """Delivers messages over SMTP through a bounded pool of connections kept open between mails.

    A connection idle for a while is checked with NOOP before use, and a server that dropped
    it is reconnected to, so reuse never costs a mail.

    Parameters:
      settings: Host, port, security, credentials, timeout, whether to reuse connections and
        how many a process keeps at most (``PIPELINE_SMTP_MAX_CONNECTIONS``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The pool's places: an idle connection with when it was last used, or None for a place
        # without one (a connection may open there). Last in, first out: the most recently used
        # goes first, and the others idle out at the relay. A queue rather than a semaphore and
        # a list: under gevent, threading's semaphore makes each release wait for the hub's next
        # round, tens of milliseconds with hundreds of mails running.
        self._pool: queue.LifoQueue[tuple[smtplib.SMTP, float] | None] = queue.LifoQueue()
        for _ in range(settings.smtp_max_connections):
            self._pool.put(None)
        #: Connections opened so far (for tests and benchmarks).
        self.opened = 0

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
        except smtplib.SMTPConnectError as exc:
            error = _deferral(exc.smtp_code, _text(exc.smtp_error))
            raise error(f"SMTP server {s.smtp_host}:{s.smtp_port} refused the connection: {exc!r}") from exc
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

    def _take(self) -> _Lease:
        """An idle connection (checked with NOOP when idle a while) or a new one, within the bound.

        Raises:
          SmtpUnavailable: Every connection stayed busy for the SMTP timeout, or none could open.
        """
        try:
            idle = self._pool.get(timeout=self.settings.smtp_timeout)
        except queue.Empty:
            raise SmtpUnavailable(
                f"all {self.settings.smtp_max_connections} SMTP connections of this worker stayed busy for "
                f"{self.settings.smtp_timeout:g} s (PIPELINE_SMTP_MAX_CONNECTIONS)"
            ) from None
        try:
            if idle is not None:
                smtp, used = idle
                if time.monotonic() - used <= IDLE_CHECK_AFTER or _answers_noop(smtp):
                    return _Lease(smtp, reused=True)
                # It did not answer (a silent one would not answer a QUIT either); the others
                # idled longer still: a new connection rather than another check.
                smtp.close()
            smtp = self._connect()
            self.opened += 1
            return _Lease(smtp, reused=False)
        except BaseException:
            self._pool.put(None)
            raise

    def _give_back(self, lease: _Lease) -> None:
        """Return a connection to the pool, or close it when broken or not to be reused."""
        if lease.broken:
            # Its state is unknown or a transaction is open (in DATA, a QUIT would be read as
            # the mail's content and never answered): closed, with nothing said.
            lease.smtp.close()
            self._pool.put(None)
        elif not self.settings.smtp_reuse_connection:
            _hang_up(lease.smtp)
            self._pool.put(None)
        else:
            self._pool.put((lease.smtp, time.monotonic()))

    def close(self) -> None:
        """Close every idle connection."""
        places = []
        while True:
            try:
                places.append(self._pool.get_nowait())
            except queue.Empty:
                break
        for idle in places:
            if idle is not None:
                _hang_up(idle[0])
            self._pool.put(None)

    def send(self, envelope: Envelope, before_data: Callable[[], object] | None = None) -> dict[str, tuple[int, str]]:
        """Deliver ``envelope``.

        A mail to more recipients than ``PIPELINE_SMTP_MAX_RECIPIENTS`` goes in several
        transactions, each to at most that many (every server takes 100, RFC 5321 says, and
        most refuse more, some for good). Once one transaction has delivered it, a later one
        that fails is no error: its recipients are returned as refused with the failure, for
        good (5xx) or for now (4xx, with the transactions not yet made), so that a later attempt
        sends to them alone.

        A reused connection the server dropped is reopened once and the mail sent on the new
        one: up to the DATA command nothing was delivered, so that repeats nothing.

        Parameters:
          envelope: The mail and who receives it.
          before_data: Called once the server has taken a transaction's envelope, right before
            the mail's content goes (a rate limit's slot): the server has the mail one round
            trip later, however long the connection and the envelope took. Nothing is sent when
            it raises, and the connection, its transaction open, is closed.

        Returns:
          The recipients the server refused while accepting the mail for others.

        Raises:
          SmtpRejected: A 5xx reply: the sender, every recipient or the data refused.
          SmtpUnavailable: No connection, a timeout or a 4xx reply, before the data was sent.
          DeliveryUncertain: The connection broke after the data was sent.
        """
        size = self.settings.smtp_max_recipients
        recipients = envelope.recipients
        refused: dict[str, tuple[int, str]] = {}
        for start in range(0, len(recipients), size):
            part = dataclasses.replace(envelope, recipients=recipients[start : start + size])
            # Some recipient of an earlier transaction has the mail: this one must not undo that.
            delivered = len(refused) < start
            try:
                refused.update(self._send_transaction(part, before_data))
            except (SmtpRejected, SmtpUnavailable) as exc:
                if not delivered:
                    raise
                if isinstance(exc, SmtpRejected):
                    refused.update(dict.fromkeys(part.recipients, (PART_REFUSED, str(exc))))
                    continue
                refused.update(dict.fromkeys(recipients[start:], (PART_DEFERRED, str(exc))))
                break
            except DeliveryUncertain as exc:
                if delivered:
                    exc.add_note(f"{start - len(refused)} recipient(s) of earlier transactions have the mail")
                raise
        if len(refused) == len(recipients):
            detail = listed(refused)
            permanent = all(code >= 500 for code, _ in refused.values())
            error = SmtpRejected if permanent else _deferral(min(code for code, _ in refused.values()), detail)
            raise error(f"every recipient refused{'' if permanent else ' for now'}: {detail}")
        return refused

    def _send_transaction(
        self, envelope: Envelope, before_data: Callable[[], object] | None
    ) -> dict[str, tuple[int, str]]:
        """One transaction of :meth:`send`: its refused recipients (all of them when the server
        took none, and then nothing was sent).
        """
        lease = self._take()
        try:
            try:
                return self._transmit(lease, envelope, before_data)
            except _BeforeData as exc:
                lease.broken = True
                if not lease.reused:
                    raise SmtpUnavailable(f"SMTP server {self.settings.smtp_host} failed: {exc.__cause__!r}") from exc
            # The server dropped a kept connection (an idle timeout): once more, on a new one.
            lease.smtp.close()
            lease = _Lease(self._connect(), reused=False)
            self.opened += 1
            try:
                return self._transmit(lease, envelope, before_data)
            except _BeforeData as again:
                lease.broken = True
                raise SmtpUnavailable(f"SMTP server {self.settings.smtp_host} failed: {again.__cause__!r}") from again
        finally:
            self._give_back(lease)

    def _transmit(
        self, lease: _Lease, envelope: Envelope, before_data: Callable[[], object] | None
    ) -> dict[str, tuple[int, str]]:
        """Run MAIL, RCPT and DATA one by one.

        smtplib's ``sendmail`` does the same, but does not say whether a broken connection broke
        before the data was sent or after.
        """
        smtp = lease.smtp
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
                self._reject(lease, code, reply, f"sender {envelope.sender!r} refused")
            refused = {}
            for recipient, (code, reply) in zip(envelope.recipients, recipient_replies, strict=True):
                if code not in (250, 251):
                    refused[recipient] = (code, _text(reply))
            if len(refused) == len(envelope.recipients):
                # Nobody to send the content to (the data a pipelined envelope sent is refused).
                self._reset(lease)
                return refused
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise _BeforeData from exc
        except PipelineError:
            raise
        except BaseException as exc:
            # Anything else between MAIL and DATA leaves a transaction open on the kept
            # connection: end it before this thread sends anything else.
            self._reset(lease)
            if isinstance(exc, UnicodeError):
                raise SmtpRejected(
                    f"an address of the mail cannot be sent to {self.settings.smtp_host} ({exc}): a non-ASCII "
                    "local part needs SMTPUTF8"
                ) from exc
            raise
        if data_reply is not None and data_reply[0] != DATA_GO_AHEAD:
            self._reject(lease, data_reply[0], data_reply[1], "data refused")
        if before_data is not None:
            try:
                before_data()
            except BaseException:
                # The transaction is open (DATA too, with PIPELINING): the connection cannot
                # carry another mail, and closing it leaves the server nothing to deliver.
                lease.broken = True
                raise
        try:
            if data_reply is None:
                code, reply = smtp.data(data)
            else:
                # DATA was sent with the envelope and the server said go ahead: the content now.
                smtp.send(_dot_stuffed(data))
                code, reply = smtp.getreply()
        except smtplib.SMTPDataError as exc:
            self._reject(lease, exc.smtp_code, exc.smtp_error, "data refused")
        except BaseException as exc:
            # Anything that stops the DATA exchange midway (a broken connection, a timeout, the
            # job's time limit) leaves unknown whether the server took the mail.
            lease.broken = True
            raise DeliveryUncertain(
                f"the connection to {self.settings.smtp_host} broke while the mail was sent ({exc!r}): "
                "the server may have taken it, so it is not sent again"
            ) from exc
        if code != 250:
            self._reject(lease, code, reply, "data refused")
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

    def _reject(self, lease: _Lease, code: int, reply: bytes | str, what: str) -> None:
        self._reset(lease)
        if code >= 500:
            raise SmtpRejected(f"SMTP server: {what}: {code} {_text(reply)}")
        raise _deferral(code, _text(reply))(f"SMTP server deferred the mail: {what}: {code} {_text(reply)}")

    @staticmethod
    def _reset(lease: _Lease) -> None:
        """End a failed transaction, so the connection can carry the next mail; a connection
        that cannot is not reused.
        """
        try:
            lease.smtp.rset()
        except (OSError, smtplib.SMTPException):
            lease.broken = True


#: What a deferral that asks the client to slow down says (besides a 421).
THROTTLING = re.compile(r"rate|too many|throttl|slow down", re.IGNORECASE)


def listed(replies: Mapping[str, tuple[int, str]], most: int = LISTED_AT_MOST) -> str:
    """Recipients and the server's reply to each, for an error message: the first ``most``,
    and how many more.
    """
    shown = "; ".join(f"{address}: {code} {text}" for address, (code, text) in itertools.islice(replies.items(), most))
    more = len(replies) - most
    return shown if more <= 0 else f"{shown}; and {more:,} more"


def _deferral(code: int, text: str) -> type[SmtpUnavailable]:
    """The error of a 4xx reply: :class:`SmtpThrottled` when the relay asks to slow down (421,
    or 450/451 naming a rate or too many of something), else :class:`SmtpUnavailable`.
    """
    if code == 421 or (code in (450, 451) and THROTTLING.search(text)):
        return SmtpThrottled
    return SmtpUnavailable


def _answers_noop(smtp: smtplib.SMTP) -> bool:
    """Whether an idle connection still answers (a relay may have closed it)."""
    try:
        return smtp.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def _hang_up(smtp: smtplib.SMTP) -> None:
    """QUIT, or just close a connection that cannot."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


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

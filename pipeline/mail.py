"""Templated email: rendering a Jinja2 pair into a MIME message, and delivering it over SMTP.

A mail named ``NAME`` is two templates: ``NAME.txt`` (the text part, not escaped) and
``NAME.html`` (the HTML part, autoescaped, usually extending ``layout.html``). The text
template holds two blocks: ``{% block subject %}`` (one line) and ``{% block body %}``. Templates run
in Jinja2's sandbox with ``StrictUndefined``: a variable the context lacks is an error, never an
empty string.

Errors are sorted for the retry policy: bad input and 5xx replies are
:class:`~pipeline.errors.PermanentError` (never retried, nothing sent); connection trouble,
timeouts and 4xx replies are :class:`~pipeline.errors.TransientError`. This module knows
nothing of Dramatiq; :mod:`pipeline.actors` wires it up.
"""

from __future__ import annotations

import contextlib
import email.policy
import functools
import logging
import re
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, getaddresses
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from pipeline.claims import Claims, ClaimState
from pipeline.errors import PermanentError, ResultBackendUnavailable, TransientError
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

#: UTF-8 bodies in quoted-printable: 7-bit on the wire, still readable in a raw view.
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP
#: How a message is written for SMTP: the ``email.mime`` classes' policy, with CRLF line ends.
_WIRE_POLICY = email.policy.compat32.clone(linesep="\r\n")

#: The folder of the templates that ship with pipeline, in a source checkout.
SOURCE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
#: Where ``pip install`` puts them (``data_files`` in setup.cfg).
INSTALLED_TEMPLATES = Path(sys.prefix) / "share" / "pipeline" / "templates"
#: What a template name may be: no dots or slashes, so it never leaves a template folder.
TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
#: Seconds a reused SMTP connection may sit idle before it is checked with NOOP first.
IDLE_CHECK_AFTER = 5.0

#: RabbitMQ priority of each template's mail when the sender gives none (default queue: 0-10).
TEMPLATE_PRIORITIES = {"password_reset": 9, "order_confirmation": 6}
#: Priority of a mail whose template is not listed above.
DEFAULT_MAIL_PRIORITY = 5
#: Priority of mails sent in bulk (newsletters, reminders): behind everything else.
BULK_MAIL_PRIORITY = 1


class MailError(PermanentError):
    """A mail cannot be built: unknown template, missing variable, bad address, bad header."""


class HeaderInjection(MailError):
    """A header value holds a line break, which would let it add headers of its own."""


class SmtpRejected(PermanentError):
    """The SMTP server refused the mail with a 5xx reply: retrying will not help."""


class SmtpUnavailable(TransientError):
    """The SMTP server could not be reached, timed out, or answered 4xx: worth retrying."""


class DeliveryUncertain(PermanentError):
    """The server may have accepted the mail, so it is not sent again.

    The connection broke after the mail's data was sent, or an earlier attempt of the same job
    was interrupted mid-send.
    """


def priority_for(template: str) -> int:
    """The RabbitMQ priority of a mail of ``template`` when the sender gives none."""
    return TEMPLATE_PRIORITIES.get(template, DEFAULT_MAIL_PRIORITY)


@dataclass(frozen=True)
class Rendered:
    """A rendered mail: subject, text part and HTML part."""

    subject: str
    text: str
    html: str


class TemplateRenderer:
    """Renders mail templates from the configured folders, then the built-in ones.

    Parameters:
      template_dirs: Folders searched first (a deploying service's own templates).
    """

    def __init__(self, template_dirs: Sequence[Path] = ()) -> None:
        builtin = SOURCE_TEMPLATES if SOURCE_TEMPLATES.is_dir() else INSTALLED_TEMPLATES
        self.search_path = [*template_dirs, builtin]
        self.environment = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(p) for p in self.search_path]),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            keep_trailing_newline=True,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        """Render the ``name`` pair with ``context``.

        Raises:
          MailError: The name is not a plain name, a template is missing or lacks a block, or
            the context lacks a variable.
          HeaderInjection: The rendered subject holds a line break.
        """
        if not TEMPLATE_NAME.fullmatch(name):
            raise MailError(f"template name {name!r} is not a plain name (letters, digits, '_' and '-')")
        with self._errors_named(f"{name}.txt"):
            text_template = self.environment.get_template(f"{name}.txt")
            blocks = text_template.new_context(dict(context))
            subject, text = (self._block(text_template, block, blocks) for block in ("subject", "body"))
        with self._errors_named(f"{name}.html"):
            html = self.environment.get_template(f"{name}.html").render(context)
        return Rendered(subject=_check_header("subject", subject.strip()), text=text.lstrip("\n"), html=html)

    @staticmethod
    def _block(template: jinja2.Template, block: str, context: Any) -> str:
        if block not in template.blocks:
            raise MailError(f"template '{template.name}' has no '{{% block {block} %}}'")
        return "".join(template.blocks[block](context))

    @contextlib.contextmanager
    def _errors_named(self, filename: str) -> Iterator[None]:
        try:
            yield
        except jinja2.TemplateNotFound as exc:
            folders = ", ".join(str(p) for p in self.search_path)
            raise MailError(f"template {exc.name!r} not found in {folders}") from exc
        except jinja2.UndefinedError as exc:
            raise MailError(f"template '{filename}': {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise MailError(f"template '{filename}' failed: {exc}") from exc


def _check_header(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise HeaderInjection(f"{name} {value!r} holds a line break (header injection refused)")
    return value


def parse_addresses(name: str, values: str | Iterable[str] | None) -> list[tuple[str, str]]:
    """The addresses in ``values`` (one string or several), each checked.

    Parameters:
      name: The header they are for, named in errors.
      values: ``"a@x.com"``, ``"Zoë Ørsted <zoe@x.com>"``, or a list of such.

    Returns:
      ``(display name, address)`` pairs; the display name may be empty.

    Raises:
      HeaderInjection: A value holds a line break.
      MailError: A value is not an address.
    """
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    addresses = []
    for item in items:
        if not isinstance(item, str):
            raise MailError(f"{name}: {item!r} is not an address")
        _check_header(name, item)
        for display, address in getaddresses([item]):
            local, at, domain = address.rpartition("@")
            if not at or not local or not domain or any(c.isspace() for c in address) or "." not in domain:
                raise MailError(f"{name}: {item!r} is not a valid address")
            addresses.append((display, address))
    return addresses


def _header_list(addresses: Sequence[tuple[str, str]]) -> str:
    return ", ".join(formataddr(pair, charset="utf-8") for pair in addresses)


@dataclass
class Envelope:
    """A built mail and who receives it over SMTP (Bcc included, which no header shows)."""

    message: Message
    sender: str
    recipients: list[str] = field(default_factory=list)


def build_message(
    rendered: Rendered,
    *,
    settings: Settings,
    message_id: str,
    to: str | Sequence[str],
    cc: str | Sequence[str] | None = None,
    bcc: str | Sequence[str] | None = None,
    reply_to: str | Sequence[str] | None = None,
) -> Envelope:
    """A multipart/alternative message (text, then HTML) ready for SMTP.

    Built with the ``email.mime`` classes: the newer ``EmailMessage`` API parses and refolds
    every header through its registry, which made building a mail cost more than sending it.
    Non-ASCII names and subjects are RFC 2047 encoded and bodies quoted-printable, so the
    message is 7-bit and any server takes it.

    Parameters:
      rendered: The rendered templates.
      settings: Gives the sender and the subject prefix.
      message_id: The job's id; the mail's Message-ID is derived from it, so every attempt of
        one job sends the same Message-ID.
      to: Recipients; cc, bcc, reply_to: optional, the same forms.

    Raises:
      MailError: An address is invalid or there is no recipient.
      HeaderInjection: A header value holds a line break.
    """
    recipients = parse_addresses("to", to)
    if not recipients:
        raise MailError("to: at least one recipient is needed")
    copies = parse_addresses("cc", cc)
    hidden = parse_addresses("bcc", bcc)
    reply = parse_addresses("reply_to", reply_to)
    (sender,) = parse_addresses("PIPELINE_MAIL_SENDER", settings.mail_sender)
    subject = _check_header("subject", settings.mail_subject_prefix + rendered.subject)
    domain = sender[1].rpartition("@")[2]

    message = MIMEMultipart("alternative")
    message.attach(MIMEText(rendered.text, "plain", _UTF8_QP))
    message.attach(MIMEText(rendered.html, "html", _UTF8_QP))
    message["From"] = _header_list([sender])
    message["To"] = _header_list(recipients)
    if copies:
        message["Cc"] = _header_list(copies)
    if reply:
        message["Reply-To"] = _header_list(reply)
    message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{_check_header('message id', message_id)}@{domain}>"
    envelope_to = [address for _, address in [*recipients, *copies, *hidden]]
    return Envelope(message=message, sender=sender[1], recipients=envelope_to)


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
            refused = self._transmit(self._connection(), envelope)
        if not self.settings.smtp_reuse_connection:
            self.close()
        return refused

    def _transmit(self, smtp: smtplib.SMTP, envelope: Envelope) -> dict[str, tuple[int, str]]:
        """Run MAIL, RCPT and DATA one by one.

        smtplib's ``sendmail`` does the same, but does not say whether a broken connection broke
        before the data was sent or after.
        """
        data = envelope.message.as_bytes(policy=_WIRE_POLICY)
        try:
            smtp.ehlo_or_helo_if_needed()
            code, reply = smtp.mail(envelope.sender)
            if code != 250:
                self._reject(smtp, code, reply, f"sender {envelope.sender!r} refused")
            refused = {}
            for recipient in envelope.recipients:
                code, reply = smtp.rcpt(recipient)
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
        try:
            code, reply = smtp.data(data)
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


class _BeforeData(Exception):
    """The connection broke before the DATA command: nothing was delivered."""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@functools.cache
def get_renderer(template_dirs: tuple[Path, ...]) -> TemplateRenderer:
    """One renderer per template search path, so templates are compiled once per process."""
    return TemplateRenderer(template_dirs)


class Mailer:
    """Renders, builds and delivers templated mail, at most once per job.

    Parameters:
      settings: SMTP, sender, subject prefix and template folders.
      claims: Where each job claims its send, so no redelivery or retry sends it twice.
    """

    def __init__(self, settings: Settings, claims: Claims) -> None:
        self.settings = settings
        self.claims = claims
        self.renderer = get_renderer(settings.template_dirs)
        self.sender = SmtpSender(settings)

    def deliver(
        self,
        job_id: str,
        *,
        to: str | Sequence[str],
        template: str,
        context: Mapping[str, Any] | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        reply_to: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Render ``template`` with ``context`` and send it, unless this job already did.

        Everything that can be wrong with the input is checked before anything is sent.

        Parameters:
          job_id: The job's message id: the claim's key and the base of the Message-ID.
          to, cc, bcc, reply_to: Addresses, one string or a list.
          template: The template pair's name.
          context: The templates' variables.

        Returns:
          ``message_id`` (the mail's Message-ID), ``accepted`` and ``refused`` recipients,
          ``template``, and ``duplicate_suppressed`` (True when an earlier attempt sent it).

        Raises:
          MailError: Bad template, context or address (permanent; nothing sent).
          SmtpRejected: The server refused it for good (permanent; nothing sent).
          SmtpUnavailable: Worth retrying; nothing was sent.
          DeliveryUncertain: The server may have it; not sent again.
        """
        rendered = self.renderer.render(template, context or {})
        envelope = build_message(
            rendered, settings=self.settings, message_id=job_id, to=to, cc=cc, bcc=bcc, reply_to=reply_to
        )
        earlier = self.claims.claim(job_id)
        if earlier is not None:
            if earlier["state"] == ClaimState.DONE:
                return {**earlier["outcome"], "duplicate_suppressed": True}
            raise DeliveryUncertain(
                f"an earlier attempt of job {job_id} was cut off while sending: the server may have "
                "taken the mail, so it is not sent again"
            )
        try:
            refused = self.sender.send(envelope)
        except DeliveryUncertain:
            raise
        except BaseException:
            self.claims.release(job_id)
            raise
        outcome = {
            "message_id": envelope.message["Message-ID"],
            "template": template,
            "accepted": [r for r in envelope.recipients if r not in refused],
            "refused": {address: [code, text] for address, (code, text) in refused.items()},
            "duplicate_suppressed": False,
        }
        try:
            self.claims.done(job_id, outcome)
        except ResultBackendUnavailable:
            # The mail is out; the claim stays "in progress", which still blocks any resend.
            logger.warning("Mail of job %s was sent but its claim could not be marked done.", job_id, exc_info=True)
        return outcome

"""Templated email: a rendered pair built into a MIME message, and delivered at most once.

:mod:`pipeline.rendering` renders the templates, this module builds the message and checks
every address and header, :mod:`pipeline.delivery` talks SMTP, and :class:`Mailer` puts the
three together behind a claim that keeps a job from sending twice. Bad input is a
:class:`~pipeline.errors.MailError` (never retried, nothing sent). This module knows nothing
of Dramatiq; :mod:`pipeline.actors` wires it up.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from email.charset import QP, Charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, getaddresses
from typing import Any

from pipeline.claims import Claims, ClaimState
from pipeline.delivery import Envelope, SmtpSender
from pipeline.errors import DeliveryUncertain, MailError, ResultBackendUnavailable
from pipeline.rendering import Rendered, check_header, get_renderer
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

#: UTF-8 bodies in quoted-printable: 7-bit on the wire, still readable in a raw view.
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP

#: RabbitMQ priority of each template's mail when the sender gives none (default queue: 0-10).
TEMPLATE_PRIORITIES = {"password_reset": 9, "order_confirmation": 6}
#: Priority of a mail whose template is not listed above.
DEFAULT_MAIL_PRIORITY = 5
#: Priority of mails sent in bulk (newsletters, reminders): behind everything else.
BULK_MAIL_PRIORITY = 1


def priority_for(template: str) -> int:
    """The RabbitMQ priority of a mail of ``template`` when the sender gives none."""
    return TEMPLATE_PRIORITIES.get(template, DEFAULT_MAIL_PRIORITY)


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
        check_header(name, item)
        for display, address in getaddresses([item]):
            local, at, domain = address.rpartition("@")
            if not at or not local or not domain or any(c.isspace() for c in address) or "." not in domain:
                raise MailError(f"{name}: {item!r} is not a valid address")
            addresses.append((display, address))
    return addresses


def _header_list(addresses: Sequence[tuple[str, str]]) -> str:
    return ", ".join(formataddr(pair, charset="utf-8") for pair in addresses)


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
    subject = check_header("subject", settings.mail_subject_prefix + rendered.subject)
    domain = sender[1].rpartition("@")[2]

    # A boundary that starts with "=_" cannot occur in quoted-printable parts (they write "=" as
    # "=3D"), so the generator need not scan the parts for it, which it does with a regular
    # expression compiled anew for every message.
    message = MIMEMultipart("alternative", boundary=f"=_{uuid.uuid4().hex}")
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
    message["Message-ID"] = f"<{check_header('message id', message_id)}@{domain}>"
    envelope_to = [address for _, address in [*recipients, *copies, *hidden]]
    return Envelope(message=message, sender=sender[1], recipients=envelope_to)


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

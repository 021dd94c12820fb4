"""Building a mail: checked addresses and headers, a multipart/alternative MIME message.

Bad input is a :class:`~pipeline.errors.MailError` (never retried, nothing sent).
"""

from __future__ import annotations

import binascii
import functools
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.charset import QP, Charset
from email.header import Header
from email.headerregistry import Address
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, getaddresses

from pipeline.errors import MailError, shown
from pipeline.mail.rendering import Rendered, check_header
from pipeline.settings import Settings

#: Longest local part, domain and address (RFC 5321).
MAX_LOCAL_PART, MAX_DOMAIN, MAX_ADDRESS = 64, 255, 254
#: A label of a host name.
HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: The longest line of a quoted-printable body (RFC 2045).
QP_LINE_LENGTH = 76
#: The longest header line the generator writes without folding (compat32's max_line_length).
MAX_HEADER_LINE = 78
#: UTF-8 as a mail writes it: bodies in quoted-printable (7-bit on the wire, still readable in
#: a raw view), header text as RFC 2047 encoded words, the shorter of B and Q (as ``Header``
#: encodes it).
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


@dataclass
class Envelope:
    """A built mail and who receives it over SMTP (Bcc included, which no header shows)."""

    message: Message
    sender: str
    recipients: list[str] = field(default_factory=list)
    #: An address has a non-ASCII local part: the mail needs a server that offers SMTPUTF8,
    #: and goes out with its headers in UTF-8.
    smtputf8: bool = False


def _text_part(text: str, subtype: str) -> Message:
    """A UTF-8, quoted-printable text part: the headers ``MIMEText`` writes, and its body
    encoded by ``binascii``'s encoder, in C. (``MIMEText``'s own encoder and parameter handling
    took half the time a mail's build does.) Where that encoder would pass the 76 characters a
    line may have (it can, with white space at a line's end), ``MIMEText`` encodes it.
    """
    # Line ends as the email package's encoder takes them: a lone CR is one too.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    if max(map(len, encoded.split(b"\n"))) > QP_LINE_LENGTH:
        # typeshed types MIMEText's charset as a name only; the email package takes a Charset too.
        return MIMEText(text, subtype, _UTF8)  # type: ignore[arg-type]
    part = Message()
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["MIME-Version"] = "1.0"
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(encoded.decode("ascii"))
    return part


@functools.lru_cache(maxsize=8)
def _sender(mail_sender: str) -> tuple[str, str]:
    """The deployment's sender, checked (once per value: it is the same for every mail)."""
    (sender,) = parse_addresses("PIPELINE_MAIL_SENDER", mail_sender)
    return sender


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
    if not isinstance(values, str | list | tuple):
        raise MailError(f"{name}: {shown(values)} is not an address or a list of addresses")
    items = [values] if isinstance(values, str) else list(values)
    addresses = []
    for item in items:
        if not isinstance(item, str):
            raise MailError(f"{name}: {item!r} is not an address")
        check_header(name, item)
        for display, address in getaddresses([item]):
            addresses.append((display, check_address(name, item, address)))
    return addresses


def check_address(name: str, given: str, address: str) -> str:
    """``address`` (from ``given``, for errors) checked, its domain in IDNA (ASCII) form.

    A non-ASCII local part is kept as it is: the mail then needs SMTPUTF8 (see :class:`Envelope`).

    Raises:
      MailError: Not ``local@domain``, too long (local part 64, domain 255, address 254), or a
        domain that is not a host name.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address) or "." not in domain:
        raise MailError(f"{name}: {given!r} is not a valid address")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise MailError(f"{name}: {given!r} has a domain that is not a host name") from None
    if not all(HOST_LABEL.fullmatch(label) for label in ascii_domain.split(".")):
        raise MailError(f"{name}: {given!r} has a domain that is not a host name")
    checked = f"{local}@{ascii_domain}"
    if len(local) > MAX_LOCAL_PART or len(ascii_domain) > MAX_DOMAIN or len(checked) > MAX_ADDRESS:
        raise MailError(
            f"{name}: {given!r} is too long (local part {MAX_LOCAL_PART}, domain {MAX_DOMAIN}, "
            f"address {MAX_ADDRESS} characters at most)"
        )
    return checked


def _utf8_address(name: str, address: str) -> Address:
    # Given as parts: Address(addr_spec=...) refuses a non-ASCII local part as a defect.
    local, _, domain = address.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def _header_list(addresses: Sequence[tuple[str, str]], utf8: bool) -> str:
    if utf8:
        # Raw UTF-8, as RFC 6532 lets a mail sent with SMTPUTF8 carry its headers.
        return ", ".join(str(_utf8_address(name, address)) for name, address in addresses)
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
    sender = _sender(settings.mail_sender)
    subject = check_header("subject", settings.mail_subject_prefix + rendered.subject)
    domain = sender[1].rpartition("@")[2]

    # A boundary that starts with "=_" cannot occur in quoted-printable parts (they write "=" as
    # "=3D"), so the generator need not scan the parts for it, which it does with a regular
    # expression compiled anew for every message.
    message = MIMEMultipart("alternative", boundary=f"=_{uuid.uuid4().hex}")
    message.attach(_text_part(rendered.text, "plain"))
    message.attach(_text_part(rendered.html, "html"))
    utf8 = not all(address.isascii() for _, address in [sender, *recipients, *copies, *hidden, *reply])
    message["From"] = _header_list([sender], utf8)
    message["To"] = _header_list(recipients, utf8)
    if copies:
        message["Cc"] = _header_list(copies, utf8)
    if reply:
        message["Reply-To"] = _header_list(reply, utf8)
    # A Header object, not its encoded text: the generator then folds it knowing the header's
    # name, and parsers read back the subject as it was, without a leading space. (typeshed
    # types a header value as text only; the email package takes a Header too.)
    if subject.isascii() or utf8:
        message["Subject"] = subject
    elif len("Subject: ") + len(encoded := _UTF8.header_encode(subject)) <= MAX_HEADER_LINE:
        # One encoded word that fits the line: what the Header object writes, made here at once
        # (the generator's folding of a Header took a third of the time a mail takes to write).
        message["Subject"] = encoded
    else:
        message["Subject"] = Header(subject, "utf-8", header_name="Subject")  # type: ignore[assignment]
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{check_header('message id', message_id)}@{domain}>"
    return Envelope(message=message, sender=sender[1], recipients=_each_once(recipients, copies, hidden), smtputf8=utf8)


def _each_once(*groups: list[tuple[str, str]]) -> list[str]:
    """The envelope's recipients: every address of ``groups`` once, in order. An address named
    twice (in To and in Bcc, or with its domain in other capitals) would be named twice to the
    server, which may deliver it twice, or in two transactions (see
    :mod:`pipeline.mail.smtp`), which do.
    """
    seen: dict[str, str] = {}
    for group in groups:
        for _, address in group:
            local, _, domain = address.rpartition("@")
            seen.setdefault(f"{local}@{domain.lower()}", address)
    return list(seen.values())

"""The mailer: a rendered, built mail delivered over SMTP at most once per job.

:mod:`~pipeline.mail.rendering` renders the templates, :mod:`~pipeline.mail.message` builds the
message and checks every address and header, :mod:`~pipeline.mail.smtp` talks SMTP, and
:class:`Mailer` puts the three together behind a claim that keeps a job from sending twice.
This package knows nothing of Dramatiq or Redis; :mod:`pipeline.actors` wires it up.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypedDict, cast

from pipeline.errors import DeliveryUncertain, MailError, ResultBackendUnavailable, SmtpUnavailable, not_text
from pipeline.mail.message import build_message, parse_addresses
from pipeline.mail.rendering import check_template_request, get_renderer
from pipeline.mail.smtp import SmtpSender, listed
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

#: RabbitMQ priority of each template's mail when the sender gives none (default queue: 0-10).
TEMPLATE_PRIORITIES = {"password_reset": 9, "order_confirmation": 6}
#: Priority of a mail whose template is not listed above.
DEFAULT_MAIL_PRIORITY = 5
#: SMTP timeouts a copy of a mail job waits, at most, for the attempt that holds its claim.
CLAIM_WAIT_TIMEOUTS = 2
#: Seconds between two looks at a claim another attempt holds.
CLAIM_POLL = 0.1
#: The lowest SMTP reply code that refuses for good (4xx: try again later).
PERMANENT_REPLY = 500
#: Priority of mails sent in bulk (newsletters, reminders): behind everything else.
BULK_MAIL_PRIORITY = 1
#: Claim state of a deed that is done (the store's ``ClaimState.DONE``).
CLAIM_DONE = "done"
#: Claim state of a deed done for some recipients, the others deferred (``ClaimState.PARTIAL``).
CLAIM_PARTIAL = "partial"


class MailOutcome(TypedDict):
    """What became of a mail: the result of a ``send_email`` job."""

    #: The mail's Message-ID header.
    message_id: str
    template: str
    #: Recipients the server took.
    accepted: list[str]
    #: Recipients the server refused for good (5xx), with its reply code and text.
    refused: dict[str, tuple[int, str]]
    #: Recipients the server deferred (4xx) on the last attempt, retried alone.
    deferred: dict[str, tuple[int, str]]
    #: True when an earlier attempt of the job sent it and this one did not.
    duplicate_suppressed: bool


class SendClaims(Protocol):
    """What the mailer needs from the store: a claim per job that makes its send happen once."""

    def claim(self, message_id: str) -> Mapping[str, Any] | None:
        """None when the claim is ours; else the earlier claim (``state``, ``outcome``)."""

    def done(self, message_id: str, outcome: Any) -> None:
        """Mark the send done with its outcome."""

    def partial(self, message_id: str, outcome: Any) -> None:
        """Mark the send done for some recipients, with the outcome so far."""

    def release(self, message_id: str) -> None:
        """Give the claim up: nothing was sent."""


def priority_for(template: str) -> int:
    """The RabbitMQ priority of a mail of ``template`` when the sender gives none."""
    return TEMPLATE_PRIORITIES.get(template, DEFAULT_MAIL_PRIORITY)


def check_mail_request(
    to: object,
    template: object,
    context: object = None,
    cc: object = None,
    bcc: object = None,
    reply_to: object = None,
) -> None:
    """Check a mail's arguments as a sender gives them: what can be told without the templates.

    Raises:
      MailError: An address, the template name or the context is not of a form a mail takes.
    """
    check_template_request(template, {} if context is None else context)
    for name, value in (("to", to), ("cc", cc), ("bcc", bcc), ("reply_to", reply_to)):
        parse_addresses(name, value)  # type: ignore[arg-type]
    if not parse_addresses("to", to):  # type: ignore[arg-type]
        raise MailError("to: at least one recipient is needed")


class Mailer:
    """Renders, builds and delivers templated mail, at most once per job.

    Parameters:
      settings: SMTP, sender, subject prefix and template folders.
      claims: Where each job claims its send, so no redelivery or retry sends it twice.
    """

    def __init__(self, settings: Settings, claims: SendClaims, pace: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.claims = claims
        # Called with the job's id right before each mail's content goes (a rate limit's slot).
        self.pace = pace
        self.renderer = get_renderer(settings.template_dirs)
        self.sender = SmtpSender(settings)

    def _claim(self, job_id: str) -> Mapping[str, Any] | None:
        """Claim the job's send. A claim another attempt holds (a copy of the message delivered
        while the first still talks to a slow server) is waited for, a while: it ends done (this
        copy sends nothing), in part, or given up (this copy sends).
        """
        deadline = time.monotonic() + self.settings.smtp_timeout * CLAIM_WAIT_TIMEOUTS
        while True:
            claim = self.claims.claim(job_id)
            if claim is None or claim["state"] in (CLAIM_DONE, CLAIM_PARTIAL) or time.monotonic() > deadline:
                return claim
            time.sleep(CLAIM_POLL)

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
    ) -> MailOutcome:
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
        try:
            rendered = self.renderer.render(template, context or {})
            envelope = build_message(
                rendered, settings=self.settings, message_id=job_id, to=to, cc=cc, bcc=bcc, reply_to=reply_to
            )
        except UnicodeEncodeError as exc:
            raise MailError(
                f"{template}: the mail would hold {not_text(exc)}, from its context or an address"
            ) from None
        earlier = self._claim(job_id)
        so_far: Mapping[str, Any] | None = None
        if earlier is not None:
            if earlier["state"] == CLAIM_DONE:
                return cast("MailOutcome", {**earlier["outcome"], "duplicate_suppressed": True})
            if earlier["state"] != CLAIM_PARTIAL:
                raise DeliveryUncertain(
                    f"an earlier attempt of job {job_id} was cut off while sending: the server may have "
                    "taken the mail, so it is not sent again"
                )
            # The recipients the server took have the mail: only the deferred ones are tried.
            so_far = earlier["outcome"]
            envelope.recipients = list(so_far["deferred"])
        try:
            # The slot is taken once the relay has the envelope: it then has the mail one round
            # trip later, which is when it counts it.
            pace = None if self.pace is None else functools.partial(self.pace, job_id)
            refused = self.sender.send(envelope, before_data=pace)
        except DeliveryUncertain:
            raise
        except BaseException:
            if so_far is None:
                self.claims.release(job_id)
            else:
                self.claims.partial(job_id, so_far)
            raise
        deferred = {address: reply for address, reply in refused.items() if reply[0] < PERMANENT_REPLY}
        outcome: MailOutcome = {
            "message_id": str(envelope.message["Message-ID"]),
            "template": template,
            "accepted": [*(so_far or {}).get("accepted", []), *(r for r in envelope.recipients if r not in refused)],
            "refused": {
                **(so_far or {}).get("refused", {}),
                **{address: reply for address, reply in refused.items() if address not in deferred},
            },
            "deferred": deferred,
            "duplicate_suppressed": False,
        }
        if deferred:
            self.claims.partial(job_id, outcome)
            detail = listed(deferred)
            raise SmtpUnavailable(
                f"the server deferred {len(deferred)} recipient(s) ({detail}); the others have the mail, "
                "the deferred ones are tried again alone"
            )
        try:
            self.claims.done(job_id, outcome)
        except ResultBackendUnavailable:
            # The mail is out; the claim stays "in progress", which still blocks any resend.
            logger.warning("Mail of job %s was sent but its claim could not be marked done.", job_id, exc_info=True)
        return outcome

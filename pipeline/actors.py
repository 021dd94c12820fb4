"""The actors of pipeline. Workers run ``dramatiq pipeline.actors --queues QUEUE``; other
services ``from pipeline.actors import ...`` and call ``.send()``, and declare actors of their
own with ``from pipeline.actors import actor``.

Each actor is a thin declaration (queue, priority, retries, time limit) around a call into a
domain module that knows nothing of Dramatiq.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from dramatiq.middleware import TimeLimitExceeded

from pipeline.broker import get_broker
from pipeline.errors import JobStopped, SourceError, shown
from pipeline.export.exporter import Exporter, ExportPointer
from pipeline.export.orders import choose_columns
from pipeline.export.sources import check_request
from pipeline.job_id import derived_job_id
from pipeline.jobs.actor_class import actor
from pipeline.jobs.current import current_message_id, interruption, report_progress, should_stop
from pipeline.jobs.mail_rate import MailRateLimit
from pipeline.jobs.options import FromSettings
from pipeline.mail.mailer import BULK_MAIL_PRIORITY, Mailer, MailOutcome, check_mail_request, priority_for
from pipeline.mail.message import parse_addresses
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.settings import get_settings
from pipeline.store.claims import Claims
from pipeline.store.connection import get_redis
from pipeline.store.exports import ExportMemory
from pipeline.store.records import get_store

__all__ = ["actor", "export_orders", "ping", "send_email"]

# Dramatiq's global broker must be pipeline's before any actor is declared; building it reads no
# setting and connects nowhere.
get_broker()


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def ping(payload: object = None) -> dict[str, object]:
    """Answer at once with what it was sent: a probe that the whole path works.

    Returns:
      ``{"pong": payload}``.
    """
    return {"pong": payload}


@functools.cache
def _mailer() -> Mailer:
    rate = next((m for m in get_broker().middleware if isinstance(m, MailRateLimit)), None)
    claims = Claims(get_redis(), get_store().writer)
    return Mailer(get_settings(), claims, pace=rate.pace if rate is not None else None)


def _mail_priority(kwargs: Mapping[str, Any]) -> int:
    return priority_for(str(kwargs.get("template", "")))


@actor(
    queue_name=DEFAULT_QUEUE,
    max_retries=FromSettings("mail_max_retries"),
    broker_priority=_mail_priority,
    bulk_priority=BULK_MAIL_PRIORITY,
    check=check_mail_request,
    rate_limited=True,
)
def send_email(
    to: str | Sequence[str],
    template: str,
    context: Mapping[str, Any] | None = None,
    cc: str | Sequence[str] | None = None,
    bcc: str | Sequence[str] | None = None,
    reply_to: str | Sequence[str] | None = None,
) -> MailOutcome:
    """Render the ``template`` pair with ``context`` and mail it, once, whatever the redeliveries.

    Send it with ``send_email.send(to=..., template=..., context={...})``; ``cc``, ``bcc``,
    ``reply_to`` and ``priority`` are optional. Without a priority, ``password_reset`` jumps
    ahead of other mail and ``send_many`` (bulk) goes behind it.

    Returns:
      The mail's ``message_id``, ``accepted`` and ``refused`` recipients, ``template`` and
      ``duplicate_suppressed``.
    """
    return _mailer().deliver(
        current_message_id(), to=to, template=template, context=context, cc=cc, bcc=bcc, reply_to=reply_to
    )


@functools.cache
def _exporter() -> Exporter:
    settings = get_settings()
    return Exporter(settings, ExportMemory(get_redis(settings), settings.export_reuse_window))


#: Longest name of an export, in characters.
MAX_EXPORT_NAME = 200


def _check_export(
    orders: list[Any] | None = None,
    file: str | None = None,
    filter: dict[str, Any] | None = None,
    columns: list[str] | None = None,
    name: str = "orders",
    notify: str | None = None,
) -> None:
    check_request(orders, file, filter)
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise SourceError(f"columns must be a list of column names, not {shown(columns)}")
        choose_columns(columns)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_EXPORT_NAME or not name.isprintable():
        raise SourceError(f"name must be printable text of 1 to {MAX_EXPORT_NAME} characters, not {shown(name)}")
    # The mail actor's own check: an address it would refuse is refused here, at send. None
    # sends no mail; an empty address (a customer without one) is a mistake, not that.
    if notify is not None and not parse_addresses("notify", notify):
        raise SourceError(f"notify names no address in {shown(notify)}: leave it out (None) to send no mail")


@actor(
    queue_name=SLOW_QUEUE,
    time_limit=FromSettings("export_time_limit", 1000),
    # An export that ran out of time would run out of time again: fail it, do not retry it.
    throws=(TimeLimitExceeded,),
    check=_check_export,
)
def export_orders(
    orders: list[dict[str, Any]] | None = None,
    file: str | None = None,
    filter: dict[str, Any] | None = None,
    columns: list[str] | None = None,
    name: str = "orders",
    notify: str | None = None,
) -> ExportPointer:
    """Export orders into an ``.xlsx`` file and return a pointer to it.

    Send it with one source: ``orders=[...]`` (inline, small), ``file="q3.jsonl"`` (under
    ``PIPELINE_IMPORT_DIR``) or ``filter={...}`` (the ``PIPELINE_ORDER_SOURCE`` plug-in).
    ``columns`` picks the Orders sheet's columns, ``name`` names the file, and ``notify``
    mails the ``export_ready`` message with the link once the file is in place.

    Returns:
      ``path``, ``url``, ``file_name``, ``rows`` per sheet, ``size``, ``sha256``,
      ``created_at``, ``reused``, and ``notified`` (the mail job's id) when asked.
    """
    job_id = current_message_id()
    try:
        pointer = _exporter().export(
            job_id,
            orders=orders,
            file=file,
            filter=filter,
            columns=columns,
            name=name,
            progress=report_progress,
            revoked=should_stop,
        )
    except JobStopped as stopped:
        raise interruption(stopped) from None
    if notify:
        export = {"name": name, "rows": pointer["rows"]["Orders"], "size": pointer["size"], "url": pointer["url"]}
        mail = send_email.message_with_options(
            kwargs={"to": notify, "template": "export_ready", "context": {"export": export}}
        )
        # The mail's id comes from the export's: a second run of the export (delivered again
        # while the first went on) sends the same mail job, which then runs once.
        mail_job = send_email.broker.enqueue(mail.copy(message_id=derived_job_id(job_id, "notify")))
        pointer["notified"] = {"to": notify, "message_id": mail_job.message_id}
    return pointer

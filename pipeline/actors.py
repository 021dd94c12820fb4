"""The actors of pipeline. Workers run ``dramatiq pipeline.actors --queues QUEUE``; other
services ``from pipeline.actors import ...`` and call ``.send()``.

Each actor is a thin declaration (queue, priority, retries, time limit) around a call into a
domain module that knows nothing of Dramatiq.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import pipeline.broker  # noqa: F401 - sets the global broker before any actor is declared
from pipeline import mail
from pipeline.actor import actor
from pipeline.claims import Claims
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import current_message_id, get_store
from pipeline.settings import get_settings


@actor(queue_name=DEFAULT_QUEUE, max_retries=0)
def ping(payload: object = None) -> dict[str, object]:
    """Answer at once with what it was sent: a probe that the whole path works.

    Returns:
      ``{"pong": payload}``.
    """
    return {"pong": payload}


@functools.cache
def _mailer() -> mail.Mailer:
    return mail.Mailer(get_settings(), Claims(get_store()))


def _mail_priority(kwargs: Mapping[str, Any]) -> int:
    return mail.priority_for(str(kwargs.get("template", "")))


@actor(
    queue_name=DEFAULT_QUEUE,
    max_retries=get_settings().mail_max_retries,
    broker_priority=_mail_priority,
    bulk_priority=mail.BULK_MAIL_PRIORITY,
)
def send_email(
    to: str | Sequence[str],
    template: str,
    context: Mapping[str, Any] | None = None,
    cc: str | Sequence[str] | None = None,
    bcc: str | Sequence[str] | None = None,
    reply_to: str | Sequence[str] | None = None,
) -> dict[str, Any]:
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

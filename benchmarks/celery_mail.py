"""The anchor of ``benchmarks/mail_throughput.py --concurrency``: the same welcome mail sent by a
Celery 5 worker with the gevent pool, as a team moving off Celery runs mail today.

    celery -A celery_mail worker -P gevent -c 200 -Q bench_mail

Each task renders the mail with pipeline's own renderer and message builder (so the content
and its cost are the same) and sends it with smtplib over a connection each greenlet keeps
open. There are no per-job records or claims: the anchor is Celery's own cost.
"""

from __future__ import annotations

import os
import smtplib
import threading

from celery import Celery

from pipeline.mail.message import build_message
from pipeline.mail.rendering import get_renderer
from pipeline.mail.smtp import _WIRE_POLICY
from pipeline.settings import Settings

#: The queue the anchor's tasks go to.
QUEUE = "bench_mail"

app = Celery("celery_mail", broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, worker_hijack_root_logger=False)

_settings = Settings(mail_sender="Shop <shop@example.com>", smtp_port=int(os.environ.get("PIPELINE_SMTP_PORT", "25")))
_local = threading.local()


def _connection() -> smtplib.SMTP:
    smtp = getattr(_local, "smtp", None)
    if smtp is None:
        smtp = _local.smtp = smtplib.SMTP(_settings.smtp_host, _settings.smtp_port, timeout=30)
    return smtp


@app.task(name="send_welcome")
def send_welcome(to: str, job: str, context: dict) -> None:
    """Render the welcome mail to ``to`` and send it."""
    rendered = get_renderer(_settings.template_dirs).render("welcome", context)
    envelope = build_message(rendered, settings=_settings, message_id=job, to=to)
    data = envelope.message.as_bytes(policy=_WIRE_POLICY)
    _connection().sendmail(envelope.sender, envelope.recipients, data)

"""Another service's actor, declared outside pipeline with pipeline's decorator: an invoice
sender on a queue of its own, with a time limit longer than RabbitMQ's consumer timeout.

Nothing in pipeline names it: its records, retries, priorities and start-up checks come from
what it declares.
"""

from __future__ import annotations

from pipeline.actors import actor
from pipeline.errors import TransientError
from pipeline.settings import get_settings
from pipeline.store.connection import get_redis

#: The queue of the invoice service.
INVOICE_QUEUE = "pipeline-test-invoices"
#: Milliseconds an invoice may take: 45 minutes, past RabbitMQ's default consumer timeout.
INVOICE_TIME_LIMIT = 45 * 60 * 1000


class InvoiceServerBusy(TransientError):
    """The invoice server asked to try later."""


@actor(queue_name=INVOICE_QUEUE, time_limit=INVOICE_TIME_LIMIT, max_retries=3, min_backoff=50, max_backoff=100)
def send_invoice(number: int, fail: str = "") -> dict[str, int]:
    """Send invoice ``number``; ``fail`` is ``busy-once`` (a passing failure on the first
    attempt) or ``bad-number`` (one no retry can fix).
    """
    runs = int(get_redis().client.incr(f"{get_settings().namespace}:invoice-runs:{number}"))
    if fail == "busy-once" and runs == 1:
        raise InvoiceServerBusy(f"invoice server busy for invoice {number}")
    if fail == "bad-number":
        raise ValueError(f"invoice {number} does not exist")
    return {"invoice": number, "runs": runs}

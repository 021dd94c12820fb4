"""``pipeline queues``: each queue's backlog, consumers and rates, for an operator at a shell."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
from dramatiq.common import dq_name, xq_name

from pipeline.cli.exit_codes import RET_OK
from pipeline.errors import ManagementUnavailable
from pipeline.management import ManagementApi, broker_vhost
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.settings import get_settings

#: The queues shown, in order: each queue, its delay queue (retries) and its dead letters.
QUEUES = [name for queue in (DEFAULT_QUEUE, SLOW_QUEUE) for name in (queue, dq_name(queue), xq_name(queue))]


def _rate(stats: dict[str, Any], name: str) -> float | None:
    details = stats.get(f"{name}_details")
    return float(details["rate"]) if isinstance(details, dict) and "rate" in details else None


def from_management(api: ManagementApi, vhost: str) -> list[dict[str, Any]]:
    """Each queue as the management API describes it (a queue not declared yet is left out)."""
    known = {queue["name"]: queue for queue in api.get(f"queues/{quote(vhost, safe='')}")}
    rows = []
    for name in QUEUES:
        queue = known.get(name)
        if queue is None:
            continue
        stats = queue.get("message_stats") or {}
        rows.append(
            {
                "queue": name,
                "ready": queue.get("messages_ready", 0),
                "unacked": queue.get("messages_unacknowledged", 0),
                "consumers": queue.get("consumers", 0),
                "publish_rate": _rate(stats, "publish"),
                "deliver_rate": _rate(stats, "deliver_get"),
                "ack_rate": _rate(stats, "ack"),
                "max_priority": (queue.get("arguments") or {}).get("x-max-priority"),
            }
        )
    return rows


def from_passive_declares() -> list[dict[str, Any]]:
    """Each queue as a passive declare tells it: ready messages and consumers only."""
    from pipeline.broker import broker

    rows = []
    channel = broker.connection.channel()
    try:
        for name in QUEUES:
            try:
                answer = channel.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker:
                channel = broker.connection.channel()
                continue
            rows.append({"queue": name, "ready": answer.message_count, "consumers": answer.consumer_count})
    finally:
        if channel.is_open:
            channel.close()
    return rows


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    return f"{value:.1f}/s" if column.endswith("_rate") else str(value)


def run(args: argparse.Namespace) -> int:
    """``pipeline queues``."""
    settings = get_settings()
    source = "management API"
    try:
        rows = from_management(ManagementApi.from_settings(settings), broker_vhost(settings))
    except ManagementUnavailable as exc:
        source = f"passive declares (no rates: {exc})"
        rows = from_passive_declares()
    if args.json:
        print(json.dumps({"source": source, "queues": rows}, indent=2))
        return RET_OK
    from rich.console import Console
    from rich.table import Table

    columns = ["queue", "ready", "unacked", "consumers", "publish_rate", "deliver_rate", "ack_rate", "max_priority"]
    table = Table(*[c.replace("_", " ") for c in columns], caption=f"from the {source}")
    for row in rows:
        table.add_row(
            *["" if row.get(c) is None else (f"{row[c]:.1f}/s" if "rate" in c else str(row[c])) for c in columns]
        )
    Console(width=160).print(table)
    return RET_OK


def add_parser(commands: Any) -> None:
    """Add ``queues`` to the command's subparsers."""
    queues = commands.add_parser(
        "queues", help="each queue's backlog, consumers, rates and max priority (with its .DQ and .XQ)"
    )
    queues.add_argument("--json", action="store_true", help="print JSON")
    queues.set_defaults(handler=run)

"""``pipeline queues``: each queue's backlog, consumers and rates, for an operator at a shell."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pika
import pika.exceptions

from pipeline.cli.exit_codes import RET_OK
from pipeline.cli.terminal import cell
from pipeline.errors import ManagementUnavailable
from pipeline.management import QUEUES, ManagementApi, broker_vhost, from_management
from pipeline.settings import get_settings


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
    table = Table(*[c.replace("_", " ") for c in columns], caption=cell(f"from the {source}", 500))
    for row in rows:
        table.add_row(
            *[cell(None if row.get(c) is None else (f"{row[c]:.1f}/s" if "rate" in c else row[c])) for c in columns]
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

"""``pipeline workers``: the worker processes alive, and ``pipeline workers quiet`` for a deploy."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from pipeline.cli.exit_codes import RET_OK, RET_USAGE
from pipeline.printable import printable
from pipeline.store.connection import get_redis
from pipeline.store.workers import WorkerEntry, WorkerRegistry, entry_fields


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _status(entry: WorkerEntry) -> str:
    if entry.lost:
        return "lost"
    return "quiet" if entry.quiet else "running"


def format_entries(entries: list[WorkerEntry]) -> str:
    """The workers as a table, oldest first."""
    if not entries:
        return "no worker has written a heartbeat"
    lines = [f"{'ID':<32} {'STATUS':<8} {'QUEUES':<16} {'THREADS':>7} {'IN FLIGHT':>9}  STARTED (UTC)        LAST BEAT"]
    for e in entries:
        lines.append(
            f"{printable(e.id, 200):<32} {_status(e):<8} {printable(','.join(e.queues), 200):<16} "
            f"{e.threads:>7} {e.in_flight:>9}  "
            f"{_when(e.started_at)}  {_when(e.beat_at)}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """List the workers, or ask some (all alive, without ids) to go quiet."""
    registry = WorkerRegistry(get_redis())
    entries = registry.alive()
    if args.action == "quiet":
        alive = [e for e in entries if not e.lost]
        chosen = [e for e in alive if not args.ids or e.id in args.ids]
        unknown = sorted(set(args.ids) - {e.id for e in alive})
        if unknown:
            print(f"no live worker with id {', '.join(unknown)} (see `pipeline workers`)")
            return RET_USAGE
        registry.ask_quiet(chosen)
        print(f"asked {len(chosen)} worker{'s' if len(chosen) != 1 else ''} to take no more jobs:")
        for e in chosen:
            print(f"  {printable(e.id, 200)}")
        return RET_OK
    if args.json:
        print(json.dumps([entry_fields(e) for e in entries], indent=2))
    else:
        print(format_entries(entries))
    return RET_OK


def add_parser(commands: Any) -> None:
    """Add ``workers`` to the command's subparsers."""
    workers = commands.add_parser(
        "workers", help="the worker processes alive (from their heartbeats); `workers quiet` stops them taking jobs"
    )
    workers.add_argument("action", nargs="?", choices=["list", "quiet"], default="list")
    workers.add_argument("ids", nargs="*", help="with quiet: the workers (ids as listed); all alive when omitted")
    workers.add_argument("--json", action="store_true", help="print JSON")
    workers.set_defaults(handler=run)

"""``pipeline jobs``: the latest jobs, filtered by state, actor and age, from the job index."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from typing import Any

from pipeline.cli.arguments import actor_name, count
from pipeline.cli.exit_codes import RET_OK
from pipeline.cli.terminal import cell
from pipeline.errors import shown
from pipeline.states import JobState
from pipeline.store.records import get_store

#: Seconds in each unit ``--since`` takes.
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def age(text: str) -> float:
    """Seconds in an age such as ``90s``, ``15m``, ``1h`` or ``2d``.

    Raises:
      argparse.ArgumentTypeError: The text is not a number and a unit.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    # Infinite: more digits than a float holds, which no date is.
    if match is None or not math.isfinite(seconds := float(match[1]) * _UNITS[match[2]]):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an age such as 90s, 15m, 1h or 2d")
    return seconds


def state_name(text: str) -> JobState:
    """The state ``text`` names, in any case.

    Raises:
      argparse.ArgumentTypeError: No such state.
    """
    try:
        return JobState(text.upper())
    except ValueError:
        names = ", ".join(s.value for s in JobState if s is not JobState.PENDING)
        raise argparse.ArgumentTypeError(f"{text!r} is not a state: one of {names}") from None


def run(args: argparse.Namespace) -> int:
    """``pipeline jobs``."""
    since = time.time() - args.since if args.since else 0.0
    records = get_store().recent(state=args.state, actor=args.actor, since=since, limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return RET_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "actor", "state", "attempt", "enqueued", "finished", "error")
    for record in records:
        fields: dict[str, Any] = dict(record)
        error = fields.get("error") or {}
        table.add_row(
            cell(fields["message_id"]),
            cell(fields.get("actor")),
            cell(fields["state"]),
            cell(fields.get("attempt")),
            cell(fields.get("enqueued_at")),
            cell(fields.get("finished_at")),
            cell(error.get("message"), 80),
        )
    Console(width=200).print(table)
    return RET_OK


def add_parser(commands: Any) -> None:
    """Add ``jobs`` to the command's subparsers."""
    jobs = commands.add_parser(
        "jobs",
        help="the latest jobs, newest first, by state, actor and age",
        description="List the latest jobs from the index kept beside the records (sorted sets by state and "
        "actor, pruned with the records' lifetime), newest first.",
    )
    jobs.add_argument("--state", type=state_name, help="only jobs in this state (QUEUED, STARTED, ... REVOKED)")
    jobs.add_argument("--actor", type=actor_name, help="only jobs of this actor")
    jobs.add_argument("--since", type=age, metavar="AGE", help="only jobs changed within AGE (90s, 15m, 1h, 2d)")
    jobs.add_argument("--limit", type=count, default=50, metavar="N", help="at most N jobs (default 50)")
    jobs.add_argument("--json", action="store_true", help="print the records as JSON")
    jobs.set_defaults(handler=run)

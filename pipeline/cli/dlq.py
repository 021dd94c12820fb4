"""``pipeline dlq``: look at dead-lettered messages, say why each failed, and put them back
(see :mod:`pipeline.dead_letters`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.arguments import actor_name, count
from pipeline.cli.exit_codes import RET_ERROR, RET_OK, RET_UNKNOWN
from pipeline.cli.terminal import cell
from pipeline.dead_letters import DEFAULT_LIMIT, MORE_REMAIN, DeadLetters, DeadMessage, dead_letter_queues
from pipeline.errors import InvalidJobId, PipelineError
from pipeline.job_id import check_job_id
from pipeline.printable import printable


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "queue", "actor", "failed at", "reason", "arguments")
    for row in rows:
        table.add_row(
            cell(row["message_id"]),
            cell(row["queue"]),
            cell(row["actor"]),
            cell(row["failed_at"]),
            cell(row["reason"], 500),
            cell(row["arguments"], 500),
        )
    Console(width=200).print(table)


def _unknown_queue(letters: DeadLetters, queue: str | None) -> bool:
    """Whether ``queue`` (None: every queue) names no queue of Dramatiq's; says why."""
    problem = None if queue is None else letters.queue_problem(queue)
    if problem is not None:
        print(f"pipeline: {problem}")
    return problem is not None


def run_list(args: argparse.Namespace) -> int:
    """``pipeline dlq list``."""
    with DeadLetters() as letters:
        if _unknown_queue(letters, args.queue):
            return RET_UNKNOWN
        rows = [dead.summary() for dead in letters.take(dead_letter_queues(args.queue), args.limit)]
    _print(rows, args.json)
    return RET_OK


def _names(given: str) -> set[str]:
    """The message ids ``given`` names: itself and, for a job id in capitals (as some databases
    keep one), the job's id. Another service's dead letter may have an id of any form.
    """
    try:
        return {given, check_job_id(given)}
    except InvalidJobId:
        return {given}


def run_show(args: argparse.Namespace) -> int:
    """``pipeline dlq show ID``."""
    names = _names(args.message_id)
    with DeadLetters() as letters:
        taken = letters.take(dead_letter_queues(None), DEFAULT_LIMIT)
        found = [d for d in taken if d.message_id in names]
        if not found:
            where = f" among the first {DEFAULT_LIMIT:,} (there are more)" if len(taken) == DEFAULT_LIMIT else ""
            print(f"pipeline: no dead-lettered message {args.message_id}{where}")
            return RET_UNKNOWN
        summary = found[0].summary()
        summary["headers"] = {k: v for k, v in (found[0].properties.headers or {}).items() if k != "x-death"}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    else:
        for name, value in summary.items():
            print(f"{name:<10} {printable(value, 20_000)}")
    return RET_OK


def run_requeue(args: argparse.Namespace) -> int:
    """``pipeline dlq requeue``."""
    if not (args.ids or args.all or args.actor):
        raise PipelineError("say which messages: job ids, --all, or --actor NAME")
    wanted = {given: _names(given) for given in args.ids}
    names = set().union(*wanted.values())

    def chosen(dead: DeadMessage) -> bool:
        return dead.message_id in names or (args.actor is not None and dead.actor == args.actor)

    with DeadLetters() as letters:
        if _unknown_queue(letters, args.queue):
            return RET_UNKNOWN
        done, refused, more = letters.requeue_chosen(
            dead_letter_queues(args.queue), None if args.all else chosen, args.limit
        )
    missing = sorted(given for given, named in wanted.items() if not named & (set(done) | refused.keys()))
    if args.json:
        said: dict[str, Any] = {"requeued": done, "not_found": missing}
        if refused:
            said["refused"] = refused
        if more:
            said["more_not_looked_at"] = True
        print(json.dumps(said))
    else:
        print(f"requeued {len(done)} message(s)" + (f"; not found: {', '.join(missing)}" if missing else ""))
        for message_id, why in refused.items():
            print(f"not requeued, as no worker could run it: {printable(message_id, 80)}: {printable(why, 400)}")
        if more:
            print(MORE_REMAIN)
    if refused:
        return RET_ERROR
    return RET_UNKNOWN if missing else RET_OK


def run_purge(args: argparse.Namespace) -> int:
    """``pipeline dlq purge QUEUE``."""
    (queue,) = dead_letter_queues(args.queue)
    with DeadLetters() as letters:
        if _unknown_queue(letters, args.queue):
            return RET_UNKNOWN
        purged = letters.channel.queue_purge(queue).method.message_count
    print(json.dumps({"queue": queue, "purged": purged}) if args.json else f"purged {purged} message(s) from {queue}")
    return RET_OK


def add_parser(commands: Any) -> None:
    """Add ``dlq`` and its subcommands to the command's subparsers."""
    dlq = commands.add_parser("dlq", help="dead-lettered messages: list, show, requeue, purge")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)

    listing = sub.add_parser("list", help="list dead-lettered messages and why each failed (changes no queue)")
    listing.add_argument("--queue", help="default, slow, or another service's queue (every queue when omitted)")
    listing.add_argument("--limit", type=count, default=100, metavar="N", help="list N at most (default 100)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)

    show = sub.add_parser("show", help="one dead-lettered message, its arguments' shapes and its failure")
    show.add_argument("message_id", help="the job id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=run_show)

    requeue = sub.add_parser(
        "requeue",
        help="put dead-lettered messages back in their queue",
        description="Publish messages again under their ids (confirmed), records back to QUEUED. "
        "Exit 0: all requeued; 4: an id given was not found, or no such queue; 5: a message no "
        "worker could run (named, with why) was left a dead letter.",
    )
    requeue.add_argument("ids", nargs="*", metavar="ID", help="job ids to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every message (of --queue)")
    requeue.add_argument("--actor", type=actor_name, help="requeue the messages of this actor")
    requeue.add_argument("--queue", help="default, slow, or another service's queue (every queue when omitted)")
    requeue.add_argument("--limit", type=count, metavar="N", help="requeue N messages at most")
    requeue.add_argument("--json", action="store_true", help="print JSON")
    requeue.set_defaults(handler=run_requeue)

    purge = sub.add_parser(
        "purge",
        help="delete every dead-lettered message of a queue",
        description="Exit 0: purged; 4: RabbitMQ has no such queue.",
    )
    purge.add_argument("queue", help="default, slow, or another service's queue")
    purge.add_argument("--json", action="store_true", help="print JSON")
    purge.set_defaults(handler=run_purge)

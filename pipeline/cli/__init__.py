"""The ``pipeline`` command: send jobs, follow them, and look after queues and services.

``pipeline export FILE`` / ``pipeline email TO TEMPLATE``
    Send a job and print its id; ``--wait`` follows it with a progress bar.
``pipeline status ID [--json] [--wait SECONDS] [--follow]``
    Print a job's record; the exit status says how the job stands (see :mod:`~pipeline.cli.exit_codes`).
``pipeline jobs [--state S] [--actor A] [--since 1h] [--limit N]``
    The latest jobs, newest first, from the job index.
``pipeline queues``
    Each queue's backlog, consumers, rates and max priority.
``pipeline workers [--json]`` / ``pipeline workers quiet [ID ...]``
    The worker processes alive, from their heartbeats; ``quiet`` makes them take no more jobs.
``pipeline web [--host 127.0.0.1] [--port 8080]``
    The web dashboard (the ``web`` extra).
``pipeline dlq list|show|requeue|purge``
    Dead-lettered messages, why they failed, and putting them back.
``pipeline doctor``
    Every check before starting workers, with fixes; exit 1 when one fails.
``pipeline demo``
    The whole system once, on this machine: workers, an export with notify, a mail.
``pipeline check``
    Exit 0 when RabbitMQ and Redis answer, 1 when either does not: a ready health check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli import demo, dlq, doctor, jobs, queues, send, status, web, workers
from pipeline.cli.exit_codes import (
    RET_BAD_ID,
    RET_ERROR,
    RET_FAILED,
    RET_OK,
    RET_UNFINISHED,
    RET_UNKNOWN,
    RET_USAGE,
)
from pipeline.cli.status import format_record
from pipeline.errors import InvalidJobId, PipelineError
from pipeline.settings import get_settings

__all__ = [
    "RET_BAD_ID",
    "RET_ERROR",
    "RET_FAILED",
    "RET_OK",
    "RET_UNFINISHED",
    "RET_UNKNOWN",
    "RET_USAGE",
    "build_parser",
    "format_record",
    "main",
]


def _check(args: argparse.Namespace) -> int:
    settings = get_settings()
    healthy = True
    for name, reachable in (("RabbitMQ", doctor.rabbitmq_reachable), ("Redis", doctor.redis_reachable)):
        try:
            print(f"{name:<9} ok    {reachable(settings)}")
        except doctor.CheckFailed as exc:
            healthy = False
            print(f"{name:<9} DOWN  {exc}")
    return RET_OK if healthy else RET_FAILED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pipeline`` command."""
    parser = argparse.ArgumentParser(prog="pipeline", description="Background jobs on Dramatiq, RabbitMQ and Redis.")
    commands = parser.add_subparsers(dest="command", required=True)
    send.add_parsers(commands)
    status.add_parser(commands)
    jobs.add_parser(commands)
    queues.add_parser(commands)
    workers.add_parser(commands)
    web.add_parser(commands)
    dlq.add_parser(commands)
    doctor.add_parser(commands)
    demo.add_parser(commands)
    check = commands.add_parser("check", help="exit 0 if RabbitMQ and Redis answer, 1 if not")
    check.set_defaults(handler=_check)
    return parser


def _escape_what_cannot_be_encoded() -> None:
    """Print a character the output cannot encode (a lone surrogate in a record another
    service's job wrote) as a backslash escape, as stderr does, rather than stop on it.
    """
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pipeline`` command and return its exit status."""
    _escape_what_cannot_be_encoded()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except InvalidJobId as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return RET_BAD_ID
    except PipelineError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return RET_ERROR

"""The ``pipeline`` command: look at jobs and check the services.

``pipeline status ID [--json] [--wait SECONDS]``
    Print a job's record; the exit status says how the job stands (see the ``RET_*`` codes).
``pipeline check``
    Exit 0 when RabbitMQ and Redis answer, 1 when either does not: a ready health check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.errors import InvalidJobId, JobTimeout, PipelineError
from pipeline.job_record import JobRecord
from pipeline.results import AsyncResult
from pipeline.settings import get_settings, mask_url
from pipeline.states import JobState
from pipeline.store.connection import get_redis

#: The job succeeded (``status``), or the services answer (``check``).
RET_OK = 0
#: The job failed or was revoked (``status``), or a service is down (``check``).
RET_FAILED = 1
#: The command line was wrong (argparse's own code).
RET_USAGE = 2
#: The job has not finished yet.
RET_UNFINISHED = 3
#: No record: the id is unknown, or the record expired.
RET_UNKNOWN = 4
#: pipeline itself could not work: bad settings, Redis unreachable.
RET_ERROR = 5
#: The id given is not a job id.
RET_BAD_ID = 6

_EXIT_BY_STATE = {
    JobState.SUCCESS: RET_OK,
    JobState.FAILURE: RET_FAILED,
    JobState.REVOKED: RET_FAILED,
    JobState.PENDING: RET_UNKNOWN,
}

#: Record fields shown by ``status``, in order, with their labels.
_LABELS = (
    ("actor", "actor"),
    ("queue", "queue"),
    ("priority", "priority"),
    ("attempt", "attempt"),
    ("enqueued_at", "enqueued"),
    ("eta", "due"),
    ("started_at", "started"),
    ("next_attempt_at", "next try"),
    ("finished_at", "finished"),
    ("revoked_at", "revoked"),
)


def format_record(message_id: str, record: JobRecord | None) -> str:
    """A job record as aligned, human-readable lines."""
    if record is None:
        return f"job {message_id}: PENDING (no record: unknown id, or expired)"
    lines = [f"job {message_id}: {record['state']}"]
    fields: dict[str, Any] = dict(record)
    lines += [f"  {label:<9} {fields[name]}" for name, label in _LABELS if fields.get(name) is not None]
    progress = record.get("progress")
    if progress:
        total = f"/{progress['total']}" if progress.get("total") is not None else ""
        phase = f" ({progress['phase']})" if progress.get("phase") else ""
        lines.append(f"  {'progress':<9} {progress['done']}{total}{phase}")
    if record.get("state") == JobState.SUCCESS.value:
        lines.append(f"  {'result':<9} {json.dumps(record.get('result'), ensure_ascii=False)}")
    error = record.get("error")
    if error:
        lines.append(f"  {'error':<9} {error['type']}: {error['message']}")
        if record.get("state") == JobState.FAILURE.value and error.get("traceback"):
            lines += ["    " + line for line in error["traceback"].rstrip().splitlines()]
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    handle = AsyncResult(args.message_id)
    # An unknown id has nothing to wait for: answer at once.
    if args.wait is not None and handle.state is not JobState.PENDING:
        with contextlib.suppress(JobTimeout):
            handle.get(timeout=args.wait, propagate=False)
    record = handle.info()
    notification = _notification(record)
    if args.json:
        shown: dict[str, Any] = dict(record) if record else {"message_id": args.message_id, "state": "PENDING"}
        if notification is not None:
            shown["notification"] = notification
        print(json.dumps(shown, indent=2, ensure_ascii=False))
    else:
        print(format_record(args.message_id, record))
        if notification is not None:
            mail = f"mail job {notification['message_id']} {notification['state']}"
            print(f"  {'notified':<9} {notification['to']}: {mail}")
    state = JobState(record["state"]) if record else JobState.PENDING
    return _EXIT_BY_STATE.get(state, RET_UNFINISHED)


def _notification(record: JobRecord | None) -> dict[str, str] | None:
    """Where an export's ``notify`` mail stands: its address, its job and that job's state."""
    result = record.get("result") if record else None
    notified = result.get("notified") if isinstance(result, dict) else None
    if not isinstance(notified, dict) or "message_id" not in notified:
        return None
    state = AsyncResult(notified["message_id"]).state
    return {"to": str(notified.get("to")), "message_id": notified["message_id"], "state": state.value}


def _check(args: argparse.Namespace) -> int:
    from pipeline.broker import broker

    settings = get_settings()
    healthy = True
    try:
        broker.connection.process_data_events(0)
        print(f"RabbitMQ  ok    {mask_url(settings.broker_url)}")
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, reported as such
        healthy = False
        print(f"RabbitMQ  DOWN  {mask_url(settings.broker_url)}: {exc!r}")
    try:
        get_redis().client.ping()
        print(f"Redis     ok    {mask_url(settings.redis_url)}")
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, reported as such
        healthy = False
        print(f"Redis     DOWN  {mask_url(settings.redis_url)}: {exc!r}")
    return RET_OK if healthy else RET_FAILED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pipeline`` command."""
    parser = argparse.ArgumentParser(prog="pipeline", description="Background jobs on Dramatiq, RabbitMQ and Redis.")
    commands = parser.add_subparsers(dest="command", required=True)

    status = commands.add_parser(
        "status",
        help="print a job's record",
        description="Print a job's record. Exit 0: SUCCESS; 1: FAILURE or REVOKED; "
        "3: not finished; 4: no record; 5: pipeline could not work; 6: not a job id.",
    )
    status.add_argument("message_id", help="the job's message id")
    status.add_argument("--json", action="store_true", help="print the record as JSON")
    status.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for the job to finish")
    status.set_defaults(handler=_status)

    check = commands.add_parser("check", help="exit 0 if RabbitMQ and Redis answer, 1 if not")
    check.set_defaults(handler=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pipeline`` command and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except InvalidJobId as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return RET_BAD_ID
    except PipelineError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return RET_ERROR

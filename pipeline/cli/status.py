"""``pipeline status ID``: a job's record, optionally followed live until it ends."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from typing import Any

from pipeline.cli.arguments import seconds
from pipeline.cli.exit_codes import exit_code
from pipeline.cli.follow import follow, read_time
from pipeline.errors import JobTimeout
from pipeline.job_id import check_job_id
from pipeline.job_record import JobRecord
from pipeline.printable import printable
from pipeline.results import AsyncResult
from pipeline.states import JobState, state_named

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
    ("interrupted_at", "interrupted"),
    ("interrupted", "why"),
)


def format_record(message_id: str, record: JobRecord | None) -> str:
    """A job record as aligned, human-readable lines, its text printable (control characters,
    which a terminal would obey, shown as escapes).
    """
    return "\n".join(printable(line, 20_000) for line in _record_lines(message_id, record))


def _record_lines(message_id: str, record: JobRecord | None) -> list[str]:
    if record is None:
        return [f"job {message_id}: PENDING (no record: unknown id, or expired)"]
    lines = [f"job {message_id}: {record.get('state', '(no state)')}"]
    fields: dict[str, Any] = dict(record)
    lines += [f"  {label:<9} {fields[name]}" for name, label in _LABELS if fields.get(name) is not None]
    progress = record.get("progress")
    if isinstance(progress, dict) and progress:
        total = f"/{progress['total']}" if progress.get("total") is not None else ""
        phase = f" ({progress['phase']})" if progress.get("phase") else ""
        lines.append(f"  {'progress':<9} {progress.get('done')}{total}{phase}")
    elif progress:
        lines.append(f"  {'progress':<9} {progress}")
    result = record.get("result")
    if record.get("state") == JobState.SUCCESS.value:
        if isinstance(result, dict) and "path" in result:
            lines += [f"  {key:<9} {result[key]}" for key in ("path", "url", "size", "rows") if key in result]
        lines.append(f"  {'result':<9} {json.dumps(result, ensure_ascii=False)}")
    error = record.get("error")
    if error and not isinstance(error, dict):
        lines.append(f"  {'error':<9} {error}")
    elif error:
        lines.append(f"  {'error':<9} {error.get('type')}: {error.get('message')}")
        if record.get("state") == JobState.FAILURE.value and error.get("traceback"):
            lines += ["    " + line for line in error["traceback"].rstrip().splitlines()]
    return lines


def notification(record: JobRecord | None, deadline: float | None = None) -> dict[str, str] | None:
    """Where an export's ``notify`` mail stands: its address, its job and that job's state
    (read by ``deadline``, see :func:`~pipeline.cli.follow.read_time`).
    """
    result = record.get("result") if record else None
    notified = result.get("notified") if isinstance(result, dict) else None
    if not isinstance(notified, dict) or "message_id" not in notified:
        return None
    mail = AsyncResult(notified["message_id"]).info(read_time(deadline))
    state = state_named(mail.get("state")) if mail else JobState.PENDING
    return {"to": str(notified.get("to")), "message_id": notified["message_id"], "state": state.value}


def show_job(message_id: str, *, as_json: bool, wait: float | None = None, live: bool = False) -> int:
    """Print job ``message_id``'s record after following it (``live``) or waiting ``wait``
    seconds for its end; the exit code that says how it stands. With ``wait``, every read is
    bounded by it too, so the command ends in about that time when Redis does not answer.
    """
    message_id = check_job_id(message_id)
    handle = AsyncResult(message_id)
    deadline = None if wait is None else time.monotonic() + wait
    if live:
        record = follow(message_id, timeout=wait)
    else:
        if deadline is not None and handle.info(read_time(deadline)) is not None:
            # An unknown id has nothing to wait for: it answers at once.
            with contextlib.suppress(JobTimeout):
                handle.get(timeout=max(deadline - time.monotonic(), 0.0), propagate=False)
        record = handle.info(read_time(deadline))
    mail = notification(record, deadline)
    if as_json:
        shown: dict[str, Any] = dict(record) if record else {"message_id": message_id, "state": "PENDING"}
        if mail is not None:
            shown["notification"] = mail
        print(json.dumps(shown, indent=2, ensure_ascii=False))
    else:
        print(format_record(message_id, record))
        if mail is not None:
            print(printable(f"  {'notified':<9} {mail['to']}: mail job {mail['message_id']} {mail['state']}", 500))
    return exit_code(state_named(record.get("state")) if record else JobState.PENDING)


def run(args: argparse.Namespace) -> int:
    """``pipeline status``."""
    return show_job(args.message_id, as_json=args.json, wait=args.wait, live=args.follow)


def add_parser(commands: Any) -> None:
    """Add ``status`` to the command's subparsers."""
    status = commands.add_parser(
        "status",
        help="print a job's record",
        description="Print a job's record. Exit 0: SUCCESS; 1: FAILURE or REVOKED; "
        "3: not finished; 4: no record; 5: pipeline could not work; 6: not a job id.",
    )
    status.add_argument("message_id", help="the job's message id")
    status.add_argument("--json", action="store_true", help="print the record as JSON")
    status.add_argument("--wait", type=seconds, metavar="SECONDS", help="wait up to SECONDS for the job to finish")
    status.add_argument(
        "--follow", action="store_true", help="draw the job's progress until it ends (or --wait runs out)"
    )
    status.set_defaults(handler=run)

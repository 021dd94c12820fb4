"""``pipeline doctor``: every check an operator would make before starting workers, one line each,
with the fix of each that fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

from pipeline.cli.exit_codes import RET_FAILED, RET_OK
from pipeline.errors import PipelineError
from pipeline.management import ManagementApi, broker_vhost
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.settings import Settings, get_settings, mask_url


class CheckFailed(Exception):
    """A check found a problem; the message says what it is and how to fix it."""


def _answers(service: str, url: str, variable: str, ping: Callable[[], object]) -> str:
    try:
        ping()
    except Exception as exc:
        raise CheckFailed(f"{mask_url(url)} did not answer ({exc!r}): start {service}, or set {variable}") from exc
    return mask_url(url)


def rabbitmq_reachable(settings: Settings) -> str:
    """The masked broker URL when RabbitMQ answers.

    Raises:
      CheckFailed: It does not; the message says what to do.
    """
    from pipeline.broker import broker

    return _answers(
        "RabbitMQ", settings.broker_url, "PIPELINE_BROKER_URL", lambda: broker.connection.process_data_events(0)
    )


def redis_reachable(settings: Settings) -> str:
    """The masked Redis URL when Redis answers.

    Raises:
      CheckFailed: It does not; the message says what to do.
    """
    from pipeline.store.connection import get_redis

    return _answers("Redis", settings.redis_url, "PIPELINE_REDIS_URL", lambda: get_redis().client.ping())


def _management(settings: Settings) -> str:
    api = ManagementApi.from_settings(settings)
    try:
        version = api.version()
    except PipelineError as exc:
        raise CheckFailed(
            f"{exc}: run `rabbitmq-plugins enable rabbitmq_management`, or set PIPELINE_MANAGEMENT_URL"
        ) from exc
    return f"RabbitMQ {version} at {api.masked}"


def _queue_arguments(settings: Settings) -> str:
    from pipeline.broker import broker
    from pipeline.jobs.queue_types import STORAGE_VERSION_ARGUMENT

    api = ManagementApi.from_settings(settings)
    found = []
    for name in (DEFAULT_QUEUE, SLOW_QUEUE):
        expected = broker.queue_arguments(name)
        try:
            declared = api.queue(broker_vhost(settings), name).get("arguments") or {}
        except PipelineError as exc:
            if "404" in str(exc):
                found.append(f"{name}: not declared yet (a worker or the first send declares it)")
                continue
            raise CheckFailed(f"cannot read queue {name!r}: {exc}") from exc
        # A queue created without the storage version is used as it is (a send or a worker
        # repeats what it has), so that difference is a note, not a failure.
        differing = {
            k: (declared.get(k), v)
            for k, v in expected.items()
            if declared.get(k) != v and not (k == STORAGE_VERSION_ARGUMENT and k not in declared)
        }
        differing |= {
            k: (v, None)
            for k, v in declared.items()
            if k not in expected and (k.startswith("x-max") or k == STORAGE_VERSION_ARGUMENT)
        }
        if differing:
            shown = ", ".join(f"{k} is {have!r}, settings want {want!r}" for k, (have, want) in differing.items())
            raise CheckFailed(
                f"queue {name!r} was declared with other arguments ({shown}): every declare will fail with "
                "PRECONDITION_FAILED; drain and delete it (with its .DQ and .XQ), or set PIPELINE_QUEUE_PRIORITIES "
                "and PIPELINE_CLASSIC_QUEUE_VERSION to what it has"
            )
        if STORAGE_VERSION_ARGUMENT in expected and STORAGE_VERSION_ARGUMENT not in declared:
            found.append(
                f"{name}: as the settings declare, but created without {STORAGE_VERSION_ARGUMENT} (used as it is; a "
                f"policy with queue-version {expected[STORAGE_VERSION_ARGUMENT]} makes a first-version queue faster)"
            )
            continue
        found.append(f"{name}: as the settings declare")
    return "; ".join(found)


def _priorities(settings: Settings) -> str:
    from pipeline.jobs.queue_types import priority_meaning, server_version

    return priority_meaning(settings, server_version(settings))


def _consumer_timeout(settings: Settings) -> str:
    from pipeline.jobs.consumer_timeout import ConsumerTimeoutCheck

    lines = ConsumerTimeoutCheck(settings).findings([DEFAULT_QUEUE, SLOW_QUEUE])
    problems = [line for level, line in lines if level >= logging.WARNING]
    if problems:
        raise CheckFailed("; ".join(problems))
    return (
        f"time limits (export {settings.export_time_limit} s, retry backoff up to {settings.retry_max_backoff} ms) "
        f"below {settings.rabbitmq_consumer_timeout} ms; " + "; ".join(line for _, line in lines[:1])
    )


def _smtp(settings: Settings) -> str:
    from pipeline.mail.smtp import SmtpSender

    try:
        SmtpSender(settings).check()
    except PipelineError as exc:
        raise CheckFailed(f"{exc}: set PIPELINE_SMTP_HOST, PIPELINE_SMTP_PORT and PIPELINE_SMTP_SECURITY") from exc
    login = f", login as {settings.smtp_user}" if settings.smtp_user else ""
    return f"{settings.smtp_host}:{settings.smtp_port} ({settings.smtp_security}{login})"


def _export_folder(settings: Settings) -> str:
    folder = settings.export_dir.resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        raise CheckFailed(
            f"{folder} is not writable ({exc.strerror}): fix its rights, or set PIPELINE_EXPORT_DIR"
        ) from exc
    return str(folder)


def _import_folder(settings: Settings) -> str:
    folder = settings.import_dir.resolve()
    if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
        raise CheckFailed(f"{folder} is not a readable folder: create it, or set PIPELINE_IMPORT_DIR")
    return str(folder)


#: The checks, in the order they run, with their names.
CHECKS: tuple[tuple[str, Callable[[Settings], str]], ...] = (
    ("RabbitMQ", rabbitmq_reachable),
    ("Redis", redis_reachable),
    ("management", _management),
    ("queues", _queue_arguments),
    ("priorities", _priorities),
    ("timeouts", _consumer_timeout),
    ("SMTP", _smtp),
    ("exports", _export_folder),
    ("imports", _import_folder),
)


def run(args: argparse.Namespace) -> int:
    """``pipeline doctor``."""
    settings = get_settings()
    results: list[dict[str, Any]] = []
    for name, check in CHECKS:
        try:
            results.append({"check": name, "ok": True, "detail": check(settings)})
        except (CheckFailed, PipelineError) as exc:
            results.append({"check": name, "ok": False, "detail": str(exc)})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(f"{'ok' if result['ok'] else 'FAIL':<4}  {result['check']:<11} {result['detail']}")
    return RET_OK if all(result["ok"] for result in results) else RET_FAILED


def add_parser(commands: Any) -> None:
    """Add ``doctor`` to the command's subparsers."""
    doctor = commands.add_parser(
        "doctor",
        help="check RabbitMQ, Redis, queues, timeouts, SMTP and folders; exit 1 when any check fails",
        description="One line per check, each failure with its fix. Exit 0: every check passed; 1: one failed.",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=run)

"""``pipeline demo``: the whole system on this machine in one command, for a newcomer.

It checks that RabbitMQ and Redis answer (saying in one line how to start the one that does
not), starts an SMTP catcher when no SMTP server answers, one worker per queue as
subprocesses, writes an order file of generated orders, sends its export with ``notify`` and a
password-reset mail at high priority, follows both with progress bars, prints the file and the
caught mails' subjects, and stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

from pipeline.cli.arguments import count
from pipeline.cli.exit_codes import RET_ERROR, RET_FAILED, RET_OK
from pipeline.cli.follow import follow
from pipeline.errors import PipelineError
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.settings import Settings, get_settings, mask_url

#: Seconds a demo worker may take to start.
WORKER_START_TIMEOUT = 30.0
#: Seconds each demo job may take.
JOB_TIMEOUT = 120.0
#: The address the demo's mails go to.
DEMO_ADDRESS = "ops@shop.example"


def services_down(settings: Settings) -> list[str]:
    """One line per service that does not answer, with how to start it."""
    from pipeline.broker import broker
    from pipeline.store.connection import get_redis

    lines = []
    try:
        broker.connection.process_data_events(0)
    except Exception:  # noqa: BLE001 - any failure to connect means it is not there
        lines.append(
            f"RabbitMQ does not answer at {mask_url(settings.broker_url)}: start it with `rabbitmq-server -detached` "
            "(and `rabbitmq-plugins enable rabbitmq_management`), or `docker compose up -d rabbitmq`"
        )
    try:
        get_redis().client.ping()
    except Exception:  # noqa: BLE001 - any failure to connect means it is not there
        lines.append(
            f"Redis does not answer at {mask_url(settings.redis_url)}: start it with `redis-server --daemonize yes`, "
            "or `docker compose up -d redis`"
        )
    return lines


@dataclasses.dataclass
class Catcher:
    """An SMTP server that keeps what it receives, for a machine without one."""

    port: int
    mails: list[bytes] = dataclasses.field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Keep the mail."""
        self.mails.append(envelope.original_content or envelope.content)
        return "250 OK"

    def subjects(self) -> list[str]:
        """The subjects of the mails caught so far."""
        return [str(make_header(decode_header(message_from_bytes(raw)["Subject"] or ""))) for raw in self.mails]


@contextlib.contextmanager
def smtp_catcher() -> Iterator[Catcher]:
    """An SMTP catcher on a free local port, stopped at the end."""
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    catcher = Catcher(port)
    controller = Controller(catcher, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        yield catcher
    finally:
        controller.stop()


class DemoWorker:
    """A ``dramatiq`` worker on one queue, its output in a log file, stopped at the end."""

    def __init__(self, queue: str, env: dict[str, str], log_folder: Path) -> None:
        self.log_path = log_folder / f"worker-{queue}.log"
        self._log = self.log_path.open("w")
        command = [sys.executable, "-m", "dramatiq", "pipeline.actors", "--processes", "1", "--threads", "2"]
        self.process = subprocess.Popen(
            [*command, "--queues", queue], env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def ready(self) -> bool:
        """Whether the worker has said it is ready."""
        return "Worker process is ready" in self.log_path.read_text()

    def stop(self) -> None:
        """Stop the worker gracefully, killing it if it does not stop in time."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def write_orders(folder: Path, count: int) -> str:
    """Write ``count`` generated orders as JSON Lines into ``folder``; the file's name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["Zoë Ørsted", "王芳", "Sam Smith", "José Álvarez", "Ødegaard AS"]
    path = folder / "demo-orders.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for n in range(1, count + 1):
            quantity = 1 + n % 4
            order = {
                "id": f"DEMO-{n:06d}",
                "created_at": f"2026-0{1 + n % 9}-{1 + n % 28:02d}T10:30:00+01:00",
                "customer_name": names[n % len(names)],
                "customer_email": f"customer{n}@example.com",
                "status": "paid",
                "currency": "EUR",
                "total": f"{quantity * 19.9:.2f}",
                "items": [{"sku": f"MUG-{n % 7}", "name": "Mug", "quantity": quantity, "unit_price": "19.90"}],
            }
            out.write(json.dumps(order, ensure_ascii=False) + "\n")
    return path.name


def run(args: argparse.Namespace) -> int:
    """``pipeline demo``."""
    settings = get_settings()
    down = services_down(settings)
    if down:
        for line in down:
            print(f"pipeline demo: {line}", file=sys.stderr)
        return RET_ERROR
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        catcher: Catcher | None = None
        from pipeline.mail.smtp import SmtpSender

        try:
            SmtpSender(settings).check()
            print(f"mail goes to the SMTP server at {settings.smtp_host}:{settings.smtp_port}")
        except PipelineError:
            try:
                catcher = stack.enter_context(smtp_catcher())
            except ImportError:
                print(
                    f"pipeline demo: no SMTP server at {settings.smtp_host}:{settings.smtp_port} and no aiosmtpd to "
                    "catch mail: install pipeline with its 'demo' extra, or set PIPELINE_SMTP_HOST",
                    file=sys.stderr,
                )
                return RET_ERROR
            env |= {"PIPELINE_SMTP_HOST": "127.0.0.1", "PIPELINE_SMTP_PORT": str(catcher.port)}
            env |= {"PIPELINE_SMTP_SECURITY": "none", "PIPELINE_SMTP_USER": ""}
            print(f"no SMTP server answers: mail is caught on 127.0.0.1:{catcher.port}")
        file_name = write_orders(settings.import_dir, args.orders)
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pipeline-demo-")))
        workers = [DemoWorker(queue, env, logs) for queue in (DEFAULT_QUEUE, SLOW_QUEUE)]
        for worker in workers:
            stack.callback(worker.stop)
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not all(worker.ready() for worker in workers):
            if time.monotonic() > deadline or any(worker.process.poll() is not None for worker in workers):
                for worker in workers:
                    print(worker.log_path.read_text(), file=sys.stderr)
                print("pipeline demo: a worker did not start (its log is above)", file=sys.stderr)
                return RET_ERROR
            time.sleep(0.1)
        print("started one worker per queue: default (mail) and slow (exports)")
        return _send_and_follow(file_name, args.orders, catcher)
    return RET_OK  # pragma: no cover - the with block returns


def _send_and_follow(file_name: str, count: int, catcher: Catcher | None) -> int:
    from pipeline.actors import export_orders, send_email
    from pipeline.results import AsyncResult

    export = export_orders.send(file=file_name, name="demo orders", notify=DEMO_ADDRESS, priority=3)
    print(f"sent an export of {count} orders: job {export.message_id}")
    reset = send_email.send(
        to=f"Zoë Ørsted <{DEMO_ADDRESS}>",
        template="password_reset",
        context={"customer": {"name": "Zoë"}, "reset_url": "https://shop.example/reset/demo", "valid_minutes": 30},
        priority=9,
    )
    print(f"sent a password-reset mail at priority 9: job {reset.message_id}")
    records: dict[str, dict[str, Any]] = {
        "mail": dict(follow(reset.message_id, timeout=JOB_TIMEOUT) or {}),
        "export": dict(follow(export.message_id, timeout=JOB_TIMEOUT) or {}),
    }
    failed = False
    for what, record in records.items():
        state = record.get("state", "PENDING")
        print(f"{what}: {state}")
        failed |= state != "SUCCESS"
        if record.get("error"):
            print(f"  {record['error']['type']}: {record['error']['message']}")
    pointer = records["export"].get("result") or {}
    if pointer:
        print(f"  file {pointer['path']} ({pointer['size']:,} bytes, {pointer['rows']['Orders']} orders)")
        print(f"  link {pointer['url']}")
        notified = pointer.get("notified") or {}
        if notified.get("message_id"):
            AsyncResult(notified["message_id"]).get(timeout=JOB_TIMEOUT, propagate=False)
    if catcher is not None:
        print("caught mails:")
        for subject in catcher.subjects():
            print(f"  {subject}")
    return RET_FAILED if failed else RET_OK


def add_parser(commands: Any) -> None:
    """Add ``demo`` to the command's subparsers."""
    demo = commands.add_parser(
        "demo",
        help="run the whole system once: workers, an export with notify, a password-reset mail",
        description="Start one worker per queue (and an SMTP catcher when no SMTP server answers), export "
        "generated orders with a notify mail and send a password reset at high priority, follow both, print "
        "the file and the mails, and stop everything. Exit 0: both succeeded; 1: a job failed; 5: a service "
        "is not running (the line says how to start it).",
    )
    demo.add_argument("--orders", type=count, default=5000, metavar="N", help="orders to generate (default 5000)")
    demo.set_defaults(handler=run)

"""Mail throughput with SMTP connection reuse against one connection per mail.

(Not named email.py: run as a script, its folder comes first on the import path and a file of
that name would hide the standard library's email package.)

    .venv/bin/python benchmarks/mail_throughput.py [--mails 5000] [--threads 8] [--rounds 2]
        [--security none,starttls] [--delay 0]
    .venv/bin/python benchmarks/mail_throughput.py --concurrency 8,200 --delay 50 [--mails 5000]

Starts a real SMTP server (aiosmtpd) on a free local port, sends ``--mails`` welcome mails
with ``send_email.send_many`` and times one worker process (``--threads`` threads) draining
them, until every job's record is ``SUCCESS``. The baseline, in the same run, is the same
worker with ``PIPELINE_SMTP_REUSE_CONNECTION=false``: a new connection (connect, banner, EHLO,
QUIT, and with ``starttls`` a TLS handshake and a login, as any real relay asks) for every
mail. Modes alternate for ``--rounds`` rounds; figures are medians.

With ``--concurrency``, the modes are instead worker threads (connections reused from the
pool): today's default of 8 against more, each with its mails per second, its worker
process's peak RSS, and the CPU time the worker spent per mail while it drained (steadier than
the rate on a shared machine, where a worker bound by its CPU gets what the others leave it).
The first count is the baseline.

On loopback a mail's own CPU hides what a connection costs. ``--delay 20`` puts a proxy between
the worker and the server that holds every reply of the server 20 ms, as a network would: then
each round trip counts, as it does against a real relay. The server offers PIPELINING, which the
sender uses to send a mail's whole envelope in one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests" / "support")]

from common import (  # noqa: E402
    REDIS_URL,
    delete_keys,
    medians,
    peak_rss_mib,
    process_cpu_seconds,
    start_worker,
    stop_worker,
    worker_pids,
)

os.environ["PIPELINE_REDIS_URL"] = REDIS_URL

import trustme  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult  # noqa: E402
from ports import free_port  # noqa: E402
from smtp import Inbox  # noqa: E402

from pipeline.actors import send_email  # noqa: E402
from pipeline.broker import broker  # noqa: E402
from pipeline.queues import DEFAULT_QUEUE  # noqa: E402
from pipeline.results import AsyncResult  # noqa: E402
from pipeline.store.connection import get_redis  # noqa: E402

CONTEXT = {"customer": {"name": "Zoë Ørsted"}, "login_url": "https://shop.example/login"}


def all_succeeded(messages) -> bool:
    pipe = get_redis().client.pipeline(transaction=False)
    for message in messages:
        pipe.hget(get_redis().keys.record(message.message_id), "state")
    return all(state == '"SUCCESS"' for state in pipe.execute())


def drain_celery(greenlets: int, mails: int, server: dict[str, str], inbox: Inbox) -> dict[str, float]:
    """The anchor: Celery 5's worker with the gevent pool of ``greenlets`` (``celery_mail.py``)."""
    import subprocess
    import uuid

    from celery_mail import QUEUE, app, send_welcome

    inbox.mails.clear()
    app.control.purge()
    env = {**os.environ, **server, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    command = [sys.executable, "-m", "celery", "-A", "celery_mail", "worker", "-P", "gevent", "-c", str(greenlets)]
    command += ["-Q", QUEUE, "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "info"]
    for n in range(mails):
        send_welcome.apply_async(args=(f"customer{n}@example.com", str(uuid.uuid4()), CONTEXT))
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    worker = subprocess.Popen(command, cwd=HERE.parent, env=env, **output)
    try:
        assert worker.stdout is not None
        ready = threading.Event()

        def read(stdout=worker.stdout) -> None:
            # Read to the end: a full pipe would stop the worker at its next log line.
            for line in stdout:
                if " ready." in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            raise RuntimeError("the Celery worker did not start")
        started, cpu = time.perf_counter(), process_cpu_seconds([worker.pid])
        while len(inbox.mails) < mails:
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"{len(inbox.mails)} of {mails} mails arrived")
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = process_cpu_seconds([worker.pid]) - cpu
        rss = _own_peak_rss_mib(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
    return {"mails_per_s": mails / elapsed, "rss_mib": rss, "cpu_ms_per_mail": cpu * 1000 / mails}


def _own_peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drain_threads(mode: str, mails: int, server: dict[str, str], inbox: Inbox) -> dict[str, float]:
    """One drain with ``mode`` threads (``gevent:N``: N greenlets; ``celery:N``: the anchor),
    connections reused, and the worker's peak RSS.
    """
    if mode.startswith("celery:"):
        return drain_celery(int(mode.removeprefix("celery:")), mails, server, inbox)
    gevent = mode.startswith("gevent:")
    count = int(mode.removeprefix("gevent:"))
    env = {**server, "PIPELINE_SMTP_MAX_CONNECTIONS": str(max(count, 1))}
    return run_drain(mails, count, env, inbox, gevent=gevent)


def drain(mode: str, mails: int, threads: int, server: dict[str, str], inbox: Inbox) -> dict[str, float]:
    """One drain, a connection per mail (``per-mail``) or connections reused (``reuse``)."""
    env = {**server, "PIPELINE_SMTP_REUSE_CONNECTION": "true" if mode == "reuse" else "false"}
    return run_drain(mails, threads, env, inbox)


def run_drain(mails: int, threads: int, env: dict[str, str], inbox: Inbox, gevent: bool = False) -> dict[str, float]:
    """Send ``mails`` welcome mails, then time a worker of ``threads`` threads draining them."""
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    broker.flush(DEFAULT_QUEUE)
    inbox.mails.clear()
    messages = send_email.send_many(
        {"to": f"customer{i}@example.com", "template": "welcome", "context": CONTEXT} for i in range(mails)
    )
    worker = start_worker(["pipeline.actors"], [DEFAULT_QUEUE], threads=threads, env=env, gevent=gevent)
    try:
        pids = worker_pids(worker)
        started, cpu = time.perf_counter(), process_cpu_seconds(pids)
        AsyncResult(messages[-1].message_id).get(timeout=900)
        while not all_succeeded(messages):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = process_cpu_seconds(pids) - cpu
        rss = peak_rss_mib(worker)
    finally:
        stop_worker(worker)
    if len(inbox.mails) != mails:
        raise RuntimeError(f"{len(inbox.mails)} mails arrived, {mails} sent")
    return {"mails_per_s": mails / elapsed, "rss_mib": rss, "cpu_ms_per_mail": cpu * 1000 / mails}


class CountingInbox(Inbox):
    """Counts mails without parsing them: the server's own cost stays out of the figures."""

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(None)
        return "250 OK"


def start_server(security: str, folder: Path) -> tuple[Controller, dict[str, str]]:
    inbox = CountingInbox()
    port = free_port()
    if security == "none":
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        return controller, {"PIPELINE_SMTP_PORT": str(port)}
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=lambda *args: AuthResult(success=True, handled=False),
    )
    controller.start()
    return controller, {
        "PIPELINE_SMTP_PORT": str(port),
        "PIPELINE_SMTP_SECURITY": "starttls",
        "PIPELINE_SMTP_CA_FILE": str(folder / "ca.pem"),
        "PIPELINE_SMTP_USER": "shop",
        "PIPELINE_SMTP_PASSWORD": "secret",
    }


class DelayProxy:
    """A TCP proxy on a free port to ``target``, holding everything the server sends ``delay`` seconds.

    Chunks keep their order and are not held up by one another: each waits its own delay.
    """

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _serve(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        held: asyncio.Queue = asyncio.Queue()

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await client_reader.read(65536):
                    server_writer.write(data)
                    await server_writer.drain()
            server_writer.close()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await server_reader.read(65536):
                    await held.put((self.loop.time() + self.delay, data))
            await held.put((self.loop.time() + self.delay, b""))

        async def release() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    client_writer.close()
                    return
                with contextlib.suppress(ConnectionError):
                    client_writer.write(data)
                    await client_writer.drain()

        await asyncio.gather(upstream(), downstream(), release(), return_exceptions=True)

    def close(self) -> None:
        """Stop the proxy's loop."""
        self.loop.call_soon_threadsafe(self.loop.stop)


def main() -> None:
    # aiosmtpd warns on every login that an attribute it sets itself is deprecated; the proxy's
    # connections end as the worker stops, which asyncio would report one by one.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--security", default="none,starttls", help="comma-separated: none, starttls")
    parser.add_argument("--delay", type=float, default=0.0, help="milliseconds every server reply is held")
    parser.add_argument(
        "--concurrency", help="comma-separated thread counts to compare (first: the baseline); gevent:N for greenlets"
    )
    args = parser.parse_args()
    if args.concurrency:
        compare_concurrency(args)
        return

    delay = f", every reply held {args.delay:g} ms" if args.delay else ""
    print(f"{args.mails} mails, one worker process with {args.threads} threads, median of {args.rounds} rounds{delay}")
    try:
        for security in args.security.split(","):
            with tempfile.TemporaryDirectory() as folder:
                controller, server = start_server(security, Path(folder))
                proxy = None
                if args.delay:
                    proxy = DelayProxy(int(server["PIPELINE_SMTP_PORT"]), args.delay / 1000)
                    server = {**server, "PIPELINE_SMTP_PORT": str(proxy.port)}
                try:
                    results = medians(
                        args.rounds,
                        ("per-mail", "reuse"),
                        lambda mode, server=server, inbox=controller.handler: drain(
                            mode, args.mails, args.threads, server, inbox
                        ),
                    )
                finally:
                    if proxy is not None:
                        proxy.close()
                    controller.stop()
            base, ours = results["per-mail"]["mails_per_s"], results["reuse"]["mails_per_s"]
            print(f"SMTP security {security}:")
            print(f"  one connection per mail (baseline): {base:8.1f} mails/s")
            print(f"  connection reused per thread:       {ours:8.1f} mails/s   {ours / base:.2f}x")
    finally:
        delete_keys()


def compare_concurrency(args: argparse.Namespace) -> None:
    """Mails per second and peak RSS of one worker process at each thread count."""
    counts = tuple(args.concurrency.split(","))
    print(f"{args.mails} mails, one worker process, every server reply held {args.delay:g} ms, median of {args.rounds}")
    try:
        with tempfile.TemporaryDirectory() as folder:
            controller, server = start_server("none", Path(folder))
            proxy = DelayProxy(int(server["PIPELINE_SMTP_PORT"]), args.delay / 1000) if args.delay else None
            if proxy is not None:
                server = {**server, "PIPELINE_SMTP_PORT": str(proxy.port)}
            try:
                results = medians(
                    args.rounds,
                    counts,
                    lambda mode, server=server, inbox=controller.handler: drain_threads(
                        mode, args.mails, server, inbox
                    ),
                )
            finally:
                if proxy is not None:
                    proxy.close()
                controller.stop()
        base = results[counts[0]]["mails_per_s"]
        for count in counts:
            figures = results[count]
            print(
                f"  {count:>10} threads: {figures['mails_per_s']:8.1f} mails/s  {figures['mails_per_s'] / base:6.2f}x"
                f"   peak RSS {figures['rss_mib']:6.1f} MiB   worker CPU {figures['cpu_ms_per_mail']:5.2f} ms/mail"
            )
    finally:
        delete_keys()


if __name__ == "__main__":
    main()

"""Mail throughput with SMTP connection reuse against one connection per mail.

(Not named email.py: run as a script, its folder comes first on the import path and a file of
that name would hide the standard library's email package.)

    .venv/bin/python benchmarks/mail_throughput.py [--mails 5000] [--threads 8] [--rounds 2]
        [--security none,starttls]

Starts a real SMTP server (aiosmtpd) on a free local port, sends ``--mails`` welcome mails
with ``send_email.send_many`` and times one worker process (``--threads`` threads) draining
them, until every job's record is ``SUCCESS``. The baseline, in the same run, is the same
worker with ``PIPELINE_SMTP_REUSE_CONNECTION=false``: a new connection (connect, banner, EHLO,
QUIT, and with ``starttls`` a TLS handshake and a login, as any real relay asks) for every
mail. Modes alternate for ``--rounds`` rounds; figures are medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests" / "support")]

from common import REDIS_URL, delete_keys, medians, start_worker, stop_worker  # noqa: E402

os.environ["PIPELINE_REDIS_URL"] = REDIS_URL

import trustme  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult  # noqa: E402
from smtp import Inbox, free_port  # noqa: E402

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


def drain(mode: str, mails: int, threads: int, server: dict[str, str], inbox: Inbox) -> dict[str, float]:
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    broker.flush(DEFAULT_QUEUE)
    inbox.mails.clear()
    messages = send_email.send_many(
        {"to": f"customer{i}@example.com", "template": "welcome", "context": CONTEXT} for i in range(mails)
    )
    env = {**server, "PIPELINE_SMTP_REUSE_CONNECTION": "true" if mode == "reuse" else "false"}
    worker = start_worker(["pipeline.actors"], [DEFAULT_QUEUE], threads=threads, env=env)
    try:
        started = time.perf_counter()
        AsyncResult(messages[-1].message_id).get(timeout=900)
        while not all_succeeded(messages):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        stop_worker(worker)
    if len(inbox.mails) != mails:
        raise RuntimeError(f"{len(inbox.mails)} mails arrived, {mails} sent")
    return {"mails_per_s": mails / elapsed}


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


def main() -> None:
    # aiosmtpd warns on every login that an attribute it sets itself is deprecated.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--security", default="none,starttls", help="comma-separated: none, starttls")
    args = parser.parse_args()

    print(f"{args.mails} mails, one worker process with {args.threads} threads, median of {args.rounds} rounds")
    try:
        for security in args.security.split(","):
            with tempfile.TemporaryDirectory() as folder:
                controller, server = start_server(security, Path(folder))
                try:
                    results = medians(
                        args.rounds,
                        ("per-mail", "reuse"),
                        lambda mode, server=server, inbox=controller.handler: drain(
                            mode, args.mails, args.threads, server, inbox
                        ),
                    )
                finally:
                    controller.stop()
            base, ours = results["per-mail"]["mails_per_s"], results["reuse"]["mails_per_s"]
            print(f"SMTP security {security}:")
            print(f"  one connection per mail (baseline): {base:8.1f} mails/s")
            print(f"  connection reused per thread:       {ours:8.1f} mails/s   {ours / base:.2f}x")
    finally:
        delete_keys()


if __name__ == "__main__":
    main()

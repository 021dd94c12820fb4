"""Every Python example of the README runs as written, in order, against the real services and
workers, as a newcomer would type them into one Python session in the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from mail_support import mail_env
from services import ROOT, WorkerProcess, flush_queue
from smtp import running_smtp_server

from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_the_readme_has_its_examples():
    assert len(EXAMPLES) >= 4


def test_every_python_example_runs_as_written(amqp, redis_client):
    with running_smtp_server() as smtp:
        for queue in (DEFAULT_QUEUE, SLOW_QUEUE):
            flush_queue(queue)
        env = {**mail_env(smtp.port), "PIPELINE_ORDER_SOURCE": "sample_source:iter_orders"}
        worker = WorkerProcess([DEFAULT_QUEUE, SLOW_QUEUE], 2, env, ["pipeline.actors"])
        try:
            session = subprocess.run(
                [sys.executable, "-c", "\n".join(EXAMPLES)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, **env},
            )
        finally:
            worker.discard()
        assert session.returncode == 0, session.stderr
        subjects = [mail["Subject"] for mail in smtp.handler.mails]
        assert "[Shop] Reset your password" in subjects

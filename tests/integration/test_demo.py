"""``pipeline demo``, the newcomer's first command, against the real services."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from services import ROOT

from pipeline.cli import RET_ERROR, RET_OK
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE

pytestmark = pytest.mark.integration


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--orders", "2000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_the_demo_runs_an_export_and_a_mail_end_to_end_and_stops_what_it_started(purge, amqp, tmp_path):
    purge(DEFAULT_QUEUE)
    purge(SLOW_QUEUE)
    folders = {"PIPELINE_EXPORT_DIR": str(tmp_path / "exports"), "PIPELINE_IMPORT_DIR": str(tmp_path / "imports")}
    out = run_demo(tmp_path, PIPELINE_SMTP_PORT="1", **folders)
    assert out.returncode == RET_OK, out.stdout + out.stderr
    assert "mail is caught" in out.stdout and "mail: SUCCESS" in out.stdout and "export: SUCCESS" in out.stdout
    (path,) = re.findall(r"file (\S+\.xlsx) \(.* bytes, 2000 orders\)", out.stdout)
    assert Path(path).is_file() and Path(path).parent == tmp_path / "exports"
    caught = out.stdout.split("caught mails:")[1]
    assert "Reset your password" in caught and 'Your export "demo orders" is ready' in caught
    for queue in (DEFAULT_QUEUE, SLOW_QUEUE):
        assert amqp.queue_declare(queue, passive=True).method.consumer_count == 0


def test_the_demo_says_in_one_line_how_to_start_a_service_that_is_not_running(tmp_path):
    out = run_demo(tmp_path, PIPELINE_REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == RET_ERROR
    (line,) = out.stderr.strip().splitlines()
    assert "Redis does not answer at redis://127.0.0.1:1/0" in line and "redis-server" in line

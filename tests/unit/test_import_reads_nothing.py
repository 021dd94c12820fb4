"""Importing the actors reads no setting and connects nowhere: a mistyped setting is reported,
by its variable's name, when a send or a worker starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BAD = {"PIPELINE_MAX_RETRIES": "lots", "PIPELINE_BROKER_URL": "amqp://nowhere.invalid:1/"}


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **BAD, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_web_service_imports_the_actors_and_results_with_a_bad_setting():
    out = run("import pipeline.actors, pipeline.results, pipeline.broker; print('imported')")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported" and out.stderr == ""


def test_the_send_reports_the_bad_setting_by_its_name():
    code = (
        "import pipeline.actors\n"
        "from pipeline.errors import SettingsError\n"
        "try:\n"
        "    pipeline.actors.ping.send(1)\n"
        "except SettingsError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = run(code)
    assert "refused: PIPELINE_MAX_RETRIES='lots'" in out.stdout, out.stderr
    assert "Unexpected failure" not in out.stderr


def test_a_worker_stops_at_start_naming_the_bad_setting():
    env = {**os.environ, **BAD, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "dramatiq", "pipeline.actors", "--processes", "1", "--threads", "1"]
    out = subprocess.run([*command, "--queues", "default"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "The worker cannot start: PIPELINE_MAX_RETRIES='lots'" in out.stdout + out.stderr
    # The metrics middleware reads the settings first, in a hook whose failure Dramatiq logs
    # with its traceback as unexpected.
    assert "Unexpected failure" not in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr


def test_workers_and_senders_load_none_of_the_dashboard():
    code = (
        "import sys, pipeline.actors, pipeline.results, pipeline.broker, pipeline.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('werkzeug', 'pipeline.web', 'flask'))))\n"
    )
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

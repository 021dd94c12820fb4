"""A RabbitMQ node restarted under a send loop, on a node of the test's own: no send hangs, every
message RabbitMQ confirmed is run once, and none that it refused is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import sample_actors
from services import ROOT
from waiting import wait_until

from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration

#: Seconds one send may take at most while the node restarts: a bound on hangs.
SEND_BOUND = 10


@pytest.mark.lasts(13)
def test_a_node_restart_under_a_send_loop_loses_and_doubles_nothing(private_rabbitmq, start_worker, clean_redis):
    env = {"PIPELINE_BROKER_URL": private_rabbitmq.url, "dramatiq_restart_delay": "500"}
    start_worker(["default"], threads=2, env=env)
    prefix = f"restart-{time.monotonic_ns()}-"
    restart = threading.Timer(1.0, private_rabbitmq.restart)
    restart.start()
    sender = [sys.executable, str(ROOT / "tests" / "support" / "sender.py"), "count_runs", "150"]
    out = subprocess.run(
        [*sender, "--prefix", prefix, "--pause", "0.02"],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")]),
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    restart.join()
    assert out.returncode == 0, out.stderr
    outcome = json.loads(out.stdout.splitlines()[-1])
    assert max(outcome["seconds"]) < SEND_BOUND
    errors = {int(n): text for n, text in outcome["errors"].items()}
    assert errors, "the restart should have refused some sends"
    confirmed = [n for n in range(150) if n not in errors]
    unknown = [n for n, text in errors.items() if text.startswith("PublishOutcomeUnknown")]
    refused = [n for n, text in errors.items() if n not in unknown]
    assert all(text.startswith("BrokerUnavailable") for n, text in errors.items() if n in refused)

    def runs(n: int) -> int:
        return int(clean_redis.get(f"{sample_actors.RUNS_PREFIX}{prefix}{n}") or 0)

    wait_until(lambda: all(runs(n) == 1 for n in confirmed), 60, "every confirmed message run")
    for n in confirmed:
        assert AsyncResult(outcome["sent"][n]).state is JobState.SUCCESS
    time.sleep(1)  # anything wrongly queued twice would have run by now
    assert all(runs(n) == 1 for n in confirmed)
    assert all(runs(n) == 0 for n in refused)
    assert all(runs(n) <= 1 for n in unknown)
    print(f"{len(confirmed)} confirmed, {len(refused)} refused, {len(unknown)} of unknown outcome")

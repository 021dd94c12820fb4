"""Throughput and latency of pipeline's job records against plain Dramatiq with its Results.

    .venv/bin/python benchmarks/throughput.py [--messages 20000] [--round-trips 300]

For each mode (``plain``: Dramatiq's ``Results`` on Redis, the baseline; ``pipeline``: the full
job record) it measures, against the real RabbitMQ and Redis on this machine:

- enqueue rate: confirmed ``send()`` one by one, messages/s;
- drain: one worker process with 8 threads started on a backlog of N messages, time until every
  one has its result (pipeline: every record ``SUCCESS``);
- latency: send then wait for the result, one at a time, p50/p95/p99 over the round trips;

and for pipeline, ``send_many`` against one-by-one confirmed sends. Figures are printed as
ratios against the baseline measured in the same run: the modes alternate for ``--rounds``
rounds and each figure is the median of its rounds. It uses Redis database 14 and the
``bench`` queue, and removes what it created.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import REDIS_URL, delete_keys, medians, start_worker, stop_worker  # noqa: E402

os.environ["PIPELINE_REDIS_URL"] = REDIS_URL


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class Mode:
    """How to wait for results in one mode."""

    def __init__(self, name: str) -> None:
        os.environ["BENCH_MODE"] = name
        import bench_actors

        self.name = name
        self.actors = bench_actors
        self.broker = bench_actors.broker

    def wait(self, message, timeout: float = 60) -> object:
        if self.name == "pipeline":
            from pipeline.results import AsyncResult

            return AsyncResult(message.message_id).get(timeout=timeout)
        return message.get_result(backend=self.actors.backend, block=True, timeout=int(timeout * 1000))

    def all_done(self, messages) -> bool:
        if self.name == "pipeline":
            from pipeline.store.connection import get_redis

            pipe = get_redis().client.pipeline(transaction=False)
            for m in messages:
                pipe.hget(get_redis().keys.record(m.message_id), "state")
            return all(state == '"SUCCESS"' for state in pipe.execute())
        backend = self.actors.backend
        pipe = backend.client.pipeline(transaction=False)
        for m in messages:
            pipe.exists(backend.build_message_key(m))
        return all(pipe.execute())


def measure(mode_name: str, messages: int, round_trips: int) -> dict[str, float]:
    """Run the three measurements in a fresh interpreter state for ``mode_name``."""
    mode = Mode(mode_name)
    mode.broker.declare_queue("bench", ensure=True)
    mode.broker.flush("bench")
    figures: dict[str, float] = {}

    started = time.perf_counter()
    sent = [mode.actors.noop.send(i) for i in range(messages)]
    figures["enqueue_per_s"] = messages / (time.perf_counter() - started)

    worker = start_worker(["bench_actors"], ["bench"], threads=8, env={"BENCH_MODE": mode_name})
    try:
        started = time.perf_counter()
        mode.wait(sent[-1], timeout=600)
        while not mode.all_done(sent):
            time.sleep(0.01)
        figures["drain_s"] = time.perf_counter() - started
        figures["drain_per_s"] = messages / figures["drain_s"]

        latencies = []
        for i in range(round_trips + 20):
            started = time.perf_counter()
            mode.wait(mode.actors.noop.send(i), timeout=30)
            if i >= 20:  # the first round trips warm connections up
                latencies.append((time.perf_counter() - started) * 1000)
        for q in (50, 95, 99):
            figures[f"p{q}_ms"] = percentile(latencies, q)
    finally:
        stop_worker(worker)

    if mode_name == "pipeline":
        bulk = min(messages, 20_000)
        started = time.perf_counter()
        mode.actors.noop.send_many([{"n": i} for i in range(bulk)])
        figures["bulk_per_s"] = bulk / (time.perf_counter() - started)
        mode.broker.flush("bench")
    return figures


def child(mode_name: str, messages: int, round_trips: int) -> None:
    print(json.dumps(measure(mode_name, messages, round_trips)))


def run_child(mode_name: str, messages: int, round_trips: int) -> dict[str, float]:
    """One mode's measurements in its own interpreter: the modes set up different global brokers."""
    command = [sys.executable, __file__, "--child", mode_name, "--messages", str(messages)]
    out = subprocess.run([*command, "--round-trips", str(round_trips)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each mode; medians are shown")
    parser.add_argument("--child", choices=("plain", "pipeline"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.messages, args.round_trips)
        return

    try:
        results = medians(
            args.rounds, ("plain", "pipeline"), lambda mode: run_child(mode, args.messages, args.round_trips)
        )
    finally:
        delete_keys()

    base, ours = results["plain"], results["pipeline"]
    print(
        f"{args.messages} messages, {args.round_trips} round trips, one worker process with 8 threads, "
        f"median of {args.rounds} alternating rounds"
    )
    print(f"{'measure':<28}{'plain Dramatiq':>16}{'pipeline':>12}{'ratio':>9}")
    rows = [
        ("enqueue, confirmed (msg/s)", "enqueue_per_s", True),
        ("drain (msg/s)", "drain_per_s", True),
        ("latency p50 (ms)", "p50_ms", False),
        ("latency p95 (ms)", "p95_ms", False),
        ("latency p99 (ms)", "p99_ms", False),
    ]
    for label, key, higher_is_better in rows:
        ratio = ours[key] / base[key]
        note = "x" if higher_is_better else "x time"
        print(f"{label:<28}{base[key]:>16.1f}{ours[key]:>12.1f}{ratio:>8.2f}{note}")
    print(
        f"send_many vs send() one by one: {ours['bulk_per_s']:.0f} vs {ours['enqueue_per_s']:.0f} msg/s"
        f" = {ours['bulk_per_s'] / ours['enqueue_per_s']:.1f}x"
    )


if __name__ == "__main__":
    main()

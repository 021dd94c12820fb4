"""Where the time of one job sent alone goes, in plain Dramatiq and in pipeline.

    .venv/bin/python benchmarks/latency_parts.py [--round-trips 500] [--rounds 3] [--queues own|dramatiq]

``throughput.py`` measures a lone job's round trip whole; this cuts it into its parts, with a
clock every process shares, for plain Dramatiq (with its ``Results`` on Redis) and pipeline,
confirms on and off, against the real RabbitMQ and Redis here:

- ``send() returns``: from the call to its return (with confirms, RabbitMQ's confirm is in it);
- ``to the worker``: from the call until Dramatiq's consumer in the worker receives the message
  (the send's work before the publish, the publish, RabbitMQ);
- ``to a worker thread``: from the call until a worker thread takes the message (the above, then
  the worker's consumer, pipeline's checks of a delivery and its finished-job question among
  it, and the hand-off to a thread);
- ``hooks before the actor``: from then until the actor runs (the middleware's
  ``before_process_message``, pipeline's look at the job's state among them);
- ``actor to result``: from the actor's start until the caller has its result (the result's
  write, the caller's wait);
- ``round trip``: the whole, as ``throughput.py`` measures its latency.

Each figure is the median over the round trips (the 90th percentile beside it), and the median
of that over ``--rounds`` alternating runs. With ``--queues own`` (the default) each system
creates the ``bench`` queue its own way (pipeline's in the second storage version of classic
queues, plain Dramatiq's in the server's default, the first on RabbitMQ 3.10); with
``--queues dramatiq`` both use it as Dramatiq creates it, which takes the queue's storage out
of the comparison. It uses Redis database 14 and the ``bench`` queue, and removes what it
created.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import (  # noqa: E402
    delete_keys,
    fresh_bench_queues,
    medians,
    run_child,
    start_worker,
    stop_worker,
)
from throughput import Mode, mode_env, percentile  # noqa: E402

MODES = ("plain/on", "pipeline/on", "plain/off", "pipeline/off")
#: The parts, in the order of a round trip.
PARTS = (
    "send() returns",
    "to the worker",
    "to a worker thread",
    "hooks before the actor",
    "actor to result",
    "round trip",
)
#: Round trips before those measured, which warm connections up.
WARM_UP = 50


def measure(mode_name: str, round_trips: int, as_dramatiq: bool) -> dict[str, float]:
    """Time ``round_trips`` lone jobs of ``mode_name`` part by part; medians and 90th
    percentiles in milliseconds.
    """
    mode = Mode(mode_name)
    import latency_actors

    fresh_bench_queues(as_dramatiq=as_dramatiq)
    mode.broker.declare_queue("bench", ensure=True)
    mode.broker.flush("bench")
    with tempfile.TemporaryDirectory() as stamps:
        env = {**mode_env(mode_name), "BENCH_STAMPS": stamps}
        worker = start_worker(["latency_actors"], ["bench"], threads=8, env=env)
        sender: dict[int, tuple[float, float, float]] = {}
        try:
            for n in range(WARM_UP + round_trips):
                called = time.monotonic()
                message = latency_actors.stamp.send(n)
                returned = time.monotonic()
                mode.wait(message, timeout=30)
                if n >= WARM_UP:
                    sender[n] = (called, returned, time.monotonic())
        finally:
            stop_worker(worker)
        worker_stamps: dict[str, dict[int, float]] = {"received": {}, "taken": {}, "ran": {}}
        for path in Path(stamps).iterdir():
            for line in path.read_text().splitlines():
                kind, n, at = line.split()
                worker_stamps[kind][int(n)] = float(at)
    received, taken, ran = worker_stamps["received"], worker_stamps["taken"], worker_stamps["ran"]
    trips = [(sender[n], received[n], taken[n], ran[n]) for n in sender if n in received and n in taken and n in ran]
    parts = {
        "send() returns": [returned - called for (called, returned, _), _, _, _ in trips],
        "to the worker": [got - called for (called, _, _), got, _, _ in trips],
        "to a worker thread": [took - called for (called, _, _), _, took, _ in trips],
        "hooks before the actor": [run - took for _, _, took, run in trips],
        "actor to result": [done - run for (_, _, done), _, _, run in trips],
        "round trip": [done - called for (called, _, done), _, _, _ in trips],
    }
    figures: dict[str, float] = {}
    for part, seconds in parts.items():
        figures[f"{part} p50"] = percentile(seconds, 50) * 1000
        figures[f"{part} p90"] = percentile(seconds, 90) * 1000
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each mode; medians are shown")
    parser.add_argument("--queues", choices=("own", "dramatiq"), default="own")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    as_dramatiq = args.queues == "dramatiq"
    if args.child:
        print(json.dumps(measure(args.child, args.round_trips, as_dramatiq)))
        return

    def run(mode: str) -> dict[str, float]:
        arguments = ["--child", mode, "--round-trips", str(args.round_trips), "--queues", args.queues]
        return run_child(__file__, arguments)

    loads: list[float] = []
    try:
        results = medians(args.rounds, MODES, run, loads)
    finally:
        delete_keys()
        fresh_bench_queues()  # gone, so that no run finds them as another system made them
    print(
        f"{args.round_trips} lone round trips, queues {args.queues}, median of {args.rounds} alternating rounds; "
        f"other load before each run: {min(loads):.2f} to {max(loads):.2f} cores"
    )
    for confirm in ("on", "off"):
        plain, ours = results[f"plain/{confirm}"], results[f"pipeline/{confirm}"]
        print(f"\nconfirms {confirm}, ms: p50 (p90)     {'plain':>13}{'pipeline':>15}{'difference':>12}")
        for part in PARTS:
            base, mine = plain[f"{part} p50"], ours[f"{part} p50"]
            print(
                f"  {part:<28}{base:>6.2f} ({plain[f'{part} p90']:>5.2f}){mine:>8.2f} ({ours[f'{part} p90']:>5.2f})"
                f"{mine - base:>+11.2f}"
            )


if __name__ == "__main__":
    main()

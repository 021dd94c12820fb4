"""What a confirmed ``send()`` pays for its record: pipeline against plain Dramatiq and the floor.

    .venv/bin/python benchmarks/record_floor.py [--messages 5000] [--rounds 5]

A confirmed ``send()`` returns with its record ``QUEUED``, so it makes a Redis write that plain
Dramatiq does not. This measures how much of pipeline's cost that write alone explains. Three
modes, each sending ``--messages`` no-op messages one by one with publisher confirms, against
the real RabbitMQ and Redis here, with no worker running:

- ``plain``: Dramatiq's ``RabbitmqBroker`` with confirms (the baseline);
- ``floor``: the same, plus the least a record can cost: one ``HSET`` of the fields pipeline
  writes, sent on a kept connection just before the publish and its answer read after the
  confirm, as pipeline sends its own. It keeps no index, checks nothing and is not
  forward-only (a late ``QUEUED`` would overwrite a fast worker's ``STARTED``): a bound, not
  an implementation;
- ``pipeline``: pipeline's broker, with its send checks, AMQP properties, and the forward-only
  write script that also keeps the dashboard's index.

It prints each mode's rate, its send time's p50 and p99, and the CPU per send of the sender,
of Redis and of the whole machine (from /proc), with each rate as a ratio against plain's. The
modes alternate for ``--rounds`` rounds, each in a fresh interpreter after the machine was let
go quiet; a figure is the median of its rounds. Every mode sends to the same ``bench`` queue,
created as Dramatiq creates it (pipeline's broker uses it as it is, not in the storage version
it creates its own queues in), so that only the record differs. It uses the ``bench`` queue and
Redis database 14, and removes what it created.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import (  # noqa: E402
    REDIS_URL,
    delete_keys,
    fresh_bench_queues,
    machine_cpu_seconds,
    medians,
    process_cpu_seconds,
    run_child,
    service_pids,
)

#: The modes, in the order they run in each round.
MODES = ("plain", "floor", "pipeline")
#: Sends made before the clock starts, so that connections and queues are set up.
WARM_UP = 300


def add_floor_record(broker: Any, redis_url: str) -> None:
    """Give ``broker`` the floor's record: an ``HSET`` sent before each publish, its answer read
    after the confirm, on one connection kept for it (the sends are made by one thread).
    """
    import dramatiq
    import redis

    connection = redis.Redis.from_url(redis_url).connection_pool.get_connection()
    connection.connect()

    class FloorRecord(dramatiq.Middleware):
        def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            fields = {
                "message_id": json.dumps(message.message_id),
                "state": '"QUEUED"',
                "actor": json.dumps(message.actor_name),
                "queue": json.dumps(message.queue_name),
                "priority": "0",
                "enqueued_at": str(message.message_timestamp),
            }
            connection.send_command("HSET", f"floor:job:{message.message_id}", *(v for f in fields.items() for v in f))

        def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            connection.read_response()

    broker.add_middleware(FloorRecord())


def measure(mode: str, messages: int) -> dict[str, float]:
    """Send ``messages`` no-op messages one by one in ``mode``, in this interpreter."""
    os.environ.update({"BENCH_MODE": "plain" if mode == "floor" else mode, "BENCH_CONFIRM": "on"})
    os.environ.update({"PIPELINE_CONFIRM_DELIVERY": "true", "PIPELINE_REDIS_URL": REDIS_URL})
    import bench_actors

    broker = bench_actors.broker
    if mode == "floor":
        add_floor_record(broker, REDIS_URL)
    fresh_bench_queues(as_dramatiq=True)
    broker.declare_queue("bench", ensure=True)
    broker.flush("bench")
    for n in range(WARM_UP):
        bench_actors.noop.send(n)
    redis_pids = service_pids()["redis"]

    own, server, machine = process_cpu_seconds([os.getpid()]), process_cpu_seconds(redis_pids), machine_cpu_seconds()
    took = []
    started = time.perf_counter()
    for n in range(messages):
        sent = time.perf_counter()
        bench_actors.noop.send(n)
        took.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    per_send = 1e6 / messages
    figures = {
        "rate": messages / elapsed,
        "p50_us": statistics.median(took) * 1e6,
        "p99_us": statistics.quantiles(took, n=100)[98] * 1e6,
        "sender_us": (process_cpu_seconds([os.getpid()]) - own) * per_send,
        "redis_us": (process_cpu_seconds(redis_pids) - server) * per_send,
        "machine_us": (machine_cpu_seconds() - machine) * per_send,
    }
    broker.flush("bench")
    return figures


def run_mode(mode: str, messages: int) -> dict[str, float]:
    """One mode's measurements in its own interpreter."""
    return run_child(__file__, ["--child", mode, "--messages", str(messages)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs of each mode; medians are shown")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.messages)))
        return

    loads: list[float] = []
    try:
        results = medians(args.rounds, MODES, lambda mode: run_mode(mode, args.messages), loads)
    finally:
        delete_keys()
        fresh_bench_queues()  # gone, so that no run finds them as another system made them

    print(
        f"{args.messages} confirmed sends one by one, median of {args.rounds} alternating rounds; "
        f"other load before each run: {min(loads):.2f} to {max(loads):.2f} cores"
    )
    print(f"{'mode':<10}{'msg/s':>8}{'ratio':>8}{'p50 us':>9}{'p99 us':>9}{'sender':>9}{'redis':>8}{'machine':>9}")
    plain = results["plain"]["rate"]
    for mode in MODES:
        r = results[mode]
        print(
            f"{mode:<10}{r['rate']:>8.0f}{r['rate'] / plain:>7.2f}x{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}"
            f"{r['sender_us']:>9.0f}{r['redis_us']:>8.0f}{r['machine_us']:>9.0f}"
        )
    print("(sender, redis, machine: CPU microseconds per send)")


if __name__ == "__main__":
    main()

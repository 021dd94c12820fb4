"""Throughput and latency of pipeline's job records against plain Dramatiq with its Results.

    .venv/bin/python benchmarks/throughput.py [--messages 20000] [--round-trips 300] [--rounds 3]

Four modes, like against like: plain Dramatiq (``Results`` on Redis, the baseline) and pipeline
(the full job record), each with publisher confirms on and off (off is plain Dramatiq's
default; pipeline's is on). For each it measures, against the real RabbitMQ and Redis here:

- enqueue rate: ``send()`` one by one, messages/s;
- drain: a worker of one process with 8 threads, then of two, started on a backlog of N
  messages, until every one has its result; every result's value is checked;
- latency: send then wait for the result, one at a time, p50/p95/p99 over the round trips, and
  the p50 of a Redis ``PING``'s round trip meanwhile (pipeline's p50 is held to plain's plus one);
- cost: the CPU time of the whole machine (sender, workers, Redis and RabbitMQ together, from
  /proc/stat) per job, over the sends and the 1x8 drain of the same jobs (``machine CPU/job``),
  with each of those four's part of it (from /proc/<pid>/stat, when Redis and RabbitMQ run on
  this machine), over each drain alone, and per round trip of the latency runs, one job at a
  time; and the worker processes' peak RSS (VmHWM);

and for pipeline with confirms, ``send_many`` against one-by-one confirmed sends. Figures are
ratios against plain Dramatiq with the same confirm mode, measured in the same run: the modes
alternate for ``--rounds`` rounds, each figure is the median of its rounds, and before each run
the benchmark waits (a minute at most) for the machine's other load to fall below 0.05 cores,
and prints what it saw. It uses Redis database 14 and the ``bench`` queue, and removes what it
created.

How it differs from another run of the same kind (20,000 no-op jobs, alternating rounds): a
drain's clock starts once the worker says it is ready, on a backlog sent before it started, and
stops when the last result is in (a run that counts the worker's start, or sends while it
drains, measures those too); each mode runs in a fresh interpreter; the machine is let go
quiet before each run, and a figure is the median of the rounds, not their mean. The no-op
actor declares a one-minute time limit in both modes, so pipeline's worker prefetches four
messages per thread (plain Dramatiq's, two): a run whose actor declares none measures pipeline
at two, as a queue of jobs that declare no limit runs. Each mode's broker creates the
``bench`` queue as it creates its own: pipeline's in the second storage version of classic
queues, plain Dramatiq's without one (the first, on the RabbitMQ here), which costs the server
more per persistent message; a run on queues that both share measures pipeline without that
(``record_floor.py`` does). Expect a few
hundredths either way between runs of this machine, and more between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import (  # noqa: E402
    REDIS_URL,
    delete_keys,
    fresh_bench_queues,
    machine_cpu_seconds,
    medians,
    peak_rss_mib,
    process_cpu_seconds,
    run_child,
    service_pids,
    start_worker,
    stop_worker,
    worker_pids,
)

os.environ["PIPELINE_REDIS_URL"] = REDIS_URL

#: The modes, as ``<system>/<confirms>``.
MODES = ("plain/on", "pipeline/on", "plain/off", "pipeline/off")
#: Where the machine's CPU goes: this process (the sender), the worker processes, Redis and
#: RabbitMQ; what is left is the rest of the machine.
PARTS = ("sender", "workers", "redis", "rabbitmq")


def cpu_now(services: dict[str, list[int]], workers: list[int]) -> dict[str, float]:
    """The CPU seconds spent so far by the whole machine and by each of :data:`PARTS`."""
    return {
        "machine": machine_cpu_seconds(),
        "sender": process_cpu_seconds([os.getpid()]),
        "workers": process_cpu_seconds(workers),
        "redis": process_cpu_seconds(services["redis"]),
        "rabbitmq": process_cpu_seconds(services["rabbitmq"]),
    }


def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """The CPU microseconds per job each part spent between two readings of :func:`cpu_now`."""
    return {part: (after[part] - before[part]) / jobs * 1e6 for part in before}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def ping_round_trip_ms(count: int = 300) -> float:
    """The median round trip of a Redis ``PING`` on one connection, in milliseconds."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - started) * 1000)
    client.close()
    return statistics.median(times)


def mode_env(mode: str) -> dict[str, str]:
    system, confirm = mode.split("/")
    return {"BENCH_MODE": system, "BENCH_CONFIRM": confirm, "PIPELINE_CONFIRM_DELIVERY": str(confirm == "on").lower()}


class Mode:
    """How to send and wait for results in one mode."""

    def __init__(self, name: str) -> None:
        os.environ.update(mode_env(name))
        import bench_actors

        self.name = name
        self.pipeline = name.startswith("pipeline")
        self.actors = bench_actors
        self.broker = bench_actors.broker

    def wait(self, message, timeout: float = 60) -> object:
        if self.pipeline:
            from pipeline.results import AsyncResult

            return AsyncResult(message.message_id).get(timeout=timeout)
        return message.get_result(backend=self.actors.backend, block=True, timeout=int(timeout * 1000))

    def results(self, messages) -> list[object]:
        """Every message's result (None where there is none yet), in one round trip for pipeline."""
        if self.pipeline:
            from pipeline.store.connection import get_redis

            redis = get_redis()
            pipe = redis.client.pipeline(transaction=False)
            for m in messages:
                pipe.hmget(redis.keys.record(m.message_id), "state", "result")
            return [json.loads(result) if state == '"SUCCESS"' else None for state, result in pipe.execute()]
        from dramatiq.results import ResultMissing

        found = []
        for m in messages:
            try:
                found.append(m.get_result(backend=self.actors.backend))
            except ResultMissing:
                found.append(None)
        return found

    def all_done(self, messages) -> bool:
        if self.pipeline:
            return all(r is not None for r in self.results(messages))
        backend = self.actors.backend
        pipe = backend.client.pipeline(transaction=False)
        for m in messages:
            pipe.exists(backend.build_message_key(m))
        return all(pipe.execute())

    def drain(self, messages, processes: int, services: dict[str, list[int]]) -> tuple[float, dict[str, float], float]:
        """A worker of ``processes`` processes of 8 threads finishing ``messages``: the seconds it
        takes, the CPU microseconds per job meanwhile (see :func:`cpu_now`), and the worker
        processes' peak RSS in MiB. Checks every value.
        """
        worker = start_worker(["bench_actors"], ["bench"], threads=8, env=mode_env(self.name), processes=processes)
        try:
            pids = worker_pids(worker)
            started, cpu = time.perf_counter(), cpu_now(services, pids)
            # Wait on the last message first: polling every result while the worker drains would
            # load Redis and this machine's two cores with the benchmark's own reads.
            self.wait(messages[-1], timeout=600)
            while not self.all_done(messages):
                time.sleep(0.01)
            took = time.perf_counter() - started
            spent = per_job(cpu, cpu_now(services, pids), len(messages))
            peak = peak_rss_mib(worker)
        finally:
            stop_worker(worker)
        values = self.results(messages)
        wrong = [(m.args[0], v) for m, v in zip(messages, values, strict=True) if v != m.args[0]]
        if wrong:
            raise AssertionError(f"{self.name}: {len(wrong)} results wrong, e.g. {wrong[:3]}")
        return took, spent, peak


def measure(mode_name: str, messages: int, round_trips: int) -> dict[str, float]:
    """Run the measurements in a fresh interpreter state for ``mode_name``."""
    mode = Mode(mode_name)
    fresh_bench_queues()
    mode.broker.declare_queue("bench", ensure=True)
    mode.broker.flush("bench")
    figures: dict[str, float] = {}
    services = service_pids()

    started, cpu = time.perf_counter(), cpu_now(services, [])
    sent = [mode.actors.noop.send(i) for i in range(messages)]
    figures["enqueue_per_s"] = messages / (time.perf_counter() - started)
    sends = per_job(cpu, cpu_now(services, []), messages)
    took, drained, figures["rss1_mib"] = mode.drain(sent, 1, services)
    figures["cpu1_us"] = drained["machine"]
    figures["cpu_job_us"] = sends["machine"] + drained["machine"]
    for part in PARTS:
        figures[f"cpu_{part}_us"] = sends[part] + drained[part]
    figures["drain1_per_s"] = messages / took
    sent = [mode.actors.noop.send(messages + i) for i in range(messages)]
    took, drained, figures["rss2_mib"] = mode.drain(sent, 2, services)
    figures["cpu2_us"] = drained["machine"]
    figures["drain2_per_s"] = messages / took

    worker = start_worker(["bench_actors"], ["bench"], threads=8, env=mode_env(mode_name))
    try:
        latencies = []
        for i in range(round_trips + 20):
            if i == 20:  # the first round trips warm connections up
                cpu = machine_cpu_seconds()
            started = time.perf_counter()
            mode.wait(mode.actors.noop.send(i), timeout=30)
            if i >= 20:
                latencies.append((time.perf_counter() - started) * 1000)
        figures["cpu_trip_us"] = (machine_cpu_seconds() - cpu) / round_trips * 1e6
        for q in (50, 95, 99):
            figures[f"p{q}_ms"] = percentile(latencies, q)
        figures["ping_ms"] = ping_round_trip_ms()
    finally:
        stop_worker(worker)

    if mode_name == "pipeline/on":
        bulk = min(messages, 20_000)
        started = time.perf_counter()
        mode.actors.noop.send_many([{"n": i} for i in range(bulk)])
        figures["bulk_per_s"] = bulk / (time.perf_counter() - started)
        mode.broker.flush("bench")
    return figures


def run_mode(mode_name: str, messages: int, round_trips: int) -> dict[str, float]:
    """One mode's measurements in its own interpreter."""
    return run_child(__file__, ["--child", mode_name, "--messages", str(messages), "--round-trips", str(round_trips)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each mode; medians are shown")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.messages, args.round_trips)))
        return

    loads: list[float] = []
    try:
        results = medians(args.rounds, MODES, lambda mode: run_mode(mode, args.messages, args.round_trips), loads)
    finally:
        delete_keys()
        fresh_bench_queues()  # gone, so that no run finds them as another system made them

    print(
        f"{args.messages} messages, {args.round_trips} round trips, median of {args.rounds} alternating rounds; "
        f"other load before each run: {min(loads):.2f} to {max(loads):.2f} cores"
    )
    print(f"{'measure':<26}{'plain/on':>10}{'ours/on':>10}{'ratio':>8}   {'plain/off':>10}{'ours/off':>10}{'ratio':>8}")
    rows = [
        ("send() (msg/s)", "enqueue_per_s", True),
        ("drain 1x8 (msg/s)", "drain1_per_s", True),
        ("drain 2x8 (msg/s)", "drain2_per_s", True),
        ("latency p50 (ms)", "p50_ms", False),
        ("latency p95 (ms)", "p95_ms", False),
        ("latency p99 (ms)", "p99_ms", False),
        ("machine CPU/job (us)", "cpu_job_us", False),
        ("  sender (us)", "cpu_sender_us", False),
        ("  workers (us)", "cpu_workers_us", False),
        ("  Redis (us)", "cpu_redis_us", False),
        ("  RabbitMQ (us)", "cpu_rabbitmq_us", False),
        ("  of which drain 1x8 (us)", "cpu1_us", False),
        ("machine CPU/job 2x8 (us)", "cpu2_us", False),
        ("machine CPU/round trip (us)", "cpu_trip_us", False),
        ("worker peak RSS 1x8 (MiB)", "rss1_mib", False),
        ("worker peak RSS 2x8 (MiB)", "rss2_mib", False),
    ]
    for label, key, higher_is_better in rows:
        cells = []
        for confirm in ("on", "off"):
            base, ours = results[f"plain/{confirm}"][key], results[f"pipeline/{confirm}"][key]
            note = "x" if higher_is_better else "t"
            # A service on another machine (a container) leaves its part unmeasured: zero.
            ratio = f"{ours / base:>7.2f}{note}" if base else f"{'n/a':>8}"
            cells.append(f"{base:>10.1f}{ours:>10.1f}{ratio}")
        print(f"{label:<26}" + "   ".join(cells))
    print("(x: ratio of rates, higher is better; t: ratio of times, costs or sizes, lower is better)")
    for confirm in ("on", "off"):
        plain, ours = results[f"plain/{confirm}"], results[f"pipeline/{confirm}"]
        bound = plain["p50_ms"] + ours["ping_ms"]
        verdict = "within" if ours["p50_ms"] <= bound else "over"
        print(
            f"latency p50, confirms {confirm}: {ours['p50_ms']:.2f} ms against plain's {plain['p50_ms']:.2f} ms "
            f"plus one Redis PING ({ours['ping_ms']:.2f} ms) = {bound:.2f} ms: {verdict}"
        )
    on = results["pipeline/on"]
    print(
        f"send_many vs send() one by one, confirms on: {on['bulk_per_s']:.0f} vs {on['enqueue_per_s']:.0f} msg/s"
        f" = {on['bulk_per_s'] / on['enqueue_per_s']:.1f}x"
    )


if __name__ == "__main__":
    main()

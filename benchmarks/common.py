"""What the benchmarks share: worker processes, Redis clean-up, medians of alternating rounds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The benchmarks' own Redis database.
REDIS_URL = "redis://127.0.0.1:6379/14"


def start_worker(
    modules: list[str],
    queues: list[str],
    threads: int,
    env: dict[str, str],
    processes: int = 1,
    gevent: bool = False,
) -> subprocess.Popen:
    """A ``dramatiq`` worker of ``processes`` processes of ``threads`` threads (greenlets, with
    ``gevent``: Dramatiq's ``dramatiq-gevent``), once every one is ready.
    """
    env = {**os.environ, "PIPELINE_REDIS_URL": REDIS_URL, **env}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
    runner = (
        [sys.executable, str(Path(sys.executable).parent / "dramatiq-gevent")]
        if gevent
        else [sys.executable, "-m", "dramatiq"]
    )
    command = [*runner, *modules, "--processes", str(processes), "--threads", str(threads)]
    process = subprocess.Popen(
        [*command, "--queues", *queues],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ready = threading.Event()
    seen = [0]

    def read() -> None:
        for line in process.stdout:
            if "Worker process is ready" in line:
                seen[0] += 1
                if seen[0] == processes:
                    ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        stop_worker(process)
        raise RuntimeError("worker did not start")
    return process


def stop_worker(process: subprocess.Popen) -> None:
    """Stop a worker with SIGTERM, SIGKILL if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(total1 - total0, 1)


def machine_cpu_seconds() -> float:
    """CPU seconds every process of the machine has spent so far (user, system and the rest
    but idle and I/O wait), from /proc/stat: a run's cost on the whole machine, sender, workers,
    Redis and RabbitMQ together, is the difference of two readings.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # guest time is already in user time
    return busy / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(process: subprocess.Popen) -> float:
    """The largest peak resident memory (VmHWM) among ``process``'s worker processes, in MiB."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    pids = children.read_text().split() if children.exists() else []
    peaks = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=0.0)


def process_cpu_seconds(pids: list[int]) -> float:
    """The CPU time (user and system) the processes ``pids`` have spent so far, in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            # The fields after the command's name, which may hold spaces: utime and stime.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, list[int]]:
    """The processes of the Redis and the RabbitMQ the benchmarks use, when they run on this
    machine (an empty list for one that does not): Redis names its own in ``INFO``, RabbitMQ's
    management API (``PIPELINE_MANAGEMENT_URL``) its nodes'.
    """
    import redis

    from pipeline.management import ManagementApi
    from pipeline.settings import get_settings

    found: dict[str, list[int]] = {"redis": [], "rabbitmq": []}
    with contextlib.suppress(Exception):
        found["redis"].append(int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"]))
    with contextlib.suppress(Exception):
        found["rabbitmq"] = [int(node["os_pid"]) for node in ManagementApi.from_settings(get_settings()).get("nodes")]
    # A pid another machine gave (a container, a remote host) names no process here.
    return {name: [pid for pid in pids if _runs_here(pid, name)] for name, pids in found.items()}


def _runs_here(pid: int, service: str) -> bool:
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return command == ("redis-server" if service == "redis" else "beam.smp")


def worker_pids(process: subprocess.Popen) -> list[int]:
    """The worker processes a ``dramatiq`` command started (its children)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def wait_for_quiet(threshold: float = 0.05, longest: float = 60.0) -> float:
    """Wait until other processes keep less than ``threshold`` cores busy (the benchmark itself is
    idle while it waits), ``longest`` seconds at most; the load last seen, in cores.
    """
    deadline = time.monotonic() + longest
    while True:
        load = busy_cores()
        if load < threshold or time.monotonic() > deadline:
            return load


def run_child(script: str, arguments: list[str]) -> dict[str, float]:
    """Run ``script`` with ``arguments`` in a fresh interpreter (a benchmark's modes set up
    different global brokers) and return the figures it printed as JSON on its last line.
    """
    out = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {' '.join(arguments)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def delete_keys() -> None:
    """Remove what the benchmarks wrote to their Redis database, which is theirs alone: every
    key, as plain Dramatiq's Redis backend names a result by a bare hash, with no prefix.
    """
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def medians(
    rounds: int, modes: tuple[str, ...], run: Callable[[str], dict[str, float]], loads: list[float] | None = None
) -> dict[str, dict[str, float]]:
    """Run every mode ``rounds`` times, alternating, and keep each figure's median per mode.

    A shared, noisy machine drifts; alternating keeps the drift from favouring one mode. Before
    each run it waits for the machine to be quiet (see :func:`wait_for_quiet`) and appends the
    other load it saw to ``loads``.
    """
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            load = wait_for_quiet()
            if loads is not None:
                loads.append(load)
            runs[mode].append(run(mode))
    return {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]} for mode, results in runs.items()
    }


def fresh_bench_queues(as_dramatiq: bool = False) -> None:
    """Delete the ``bench`` queue, its ``.DQ`` and ``.XQ``, so that the next mode's broker
    creates them as it creates its own (pipeline's classic queues in the second storage
    version, plain Dramatiq's without one: the first, on the RabbitMQ here); with
    ``as_dramatiq``, create them again as Dramatiq does, which pipeline's broker then uses as
    they are.
    """
    import pika
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from pipeline.settings import get_settings

    url = get_settings().broker_url
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in ("bench", "bench.DQ", "bench.XQ"):
            channel.queue_delete(name)
    finally:
        connection.close()
    if as_dramatiq:
        broker = RabbitmqBroker(url=url)
        try:
            broker.declare_queue("bench", ensure=True)
        finally:
            broker.close()

"""``pipeline jobs`` against a Redis holding a million records.

    .venv/bin/python benchmarks/jobs_index.py [--records 1000000] [--rounds 20]

It starts a Redis server of its own on a free port (the machine's Redis is not touched), writes
``--records`` job records through the record write script (each QUEUED, then SUCCESS, or
FAILURE for one in ten, over four actors), then times the listings ``pipeline jobs`` makes,
each the median of ``--rounds`` calls, with 50 records per answer. The baseline, measured in
the same run on the same data, is what a listing without the index would cost: one SCAN over
the namespace's keys (only the SCAN, before reading a single record).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests" / "support")]

from private_redis import PrivateRedis  # noqa: E402

from pipeline.settings import Settings  # noqa: E402
from pipeline.states import JobState  # noqa: E402
from pipeline.store.connection import RedisConnection  # noqa: E402
from pipeline.store.records import RecordStore  # noqa: E402
from pipeline.store.write_script import WRITE_SCRIPT  # noqa: E402

ACTORS = ("send_email", "export_orders", "ping", "record_order")


def fill(store: RecordStore, count: int) -> None:
    """Write ``count`` records through the record write script, over four actors."""
    store.client.script_load(WRITE_SCRIPT)
    batch = 5_000
    for start in range(0, count, batch):
        pipe = store.client.pipeline(transaction=False)
        for n in range(start, min(start + batch, count)):
            message_id = f"00000000-0000-4000-8000-{n:012d}"
            fields = {"actor": ACTORS[n % len(ACTORS)], "queue": "default"}
            for state, attempt in ((JobState.QUEUED, 0), (JobState.FAILURE if n % 10 == 0 else JobState.SUCCESS, 1)):
                keys, args = store._write_call(message_id, state, attempt, fields)
                pipe.evalsha(store._sha, len(keys), *keys, *args)
        pipe.execute()


@contextlib.contextmanager
def filled_store(records: int, **overrides: object) -> Iterator[RecordStore]:
    """A Redis server of the benchmark's own on a free port, holding ``records`` records under
    the ``bench`` namespace; the store of its settings (``overrides`` on top). Stopped after.
    """
    with tempfile.TemporaryDirectory() as folder:
        server = PrivateRedis(Path(folder))
        try:
            settings = dataclasses.replace(Settings(), redis_url=server.url, namespace="bench", **overrides)
            store = RecordStore(RedisConnection(settings))
            started = time.perf_counter()
            fill(store, records)
            print(f"wrote {records:,} records in {time.perf_counter() - started:.0f} s")
            yield store
        finally:
            server.stop()


def median_ms(call, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with filled_store(args.records) as store:
        baseline = median_ms(lambda: sum(1 for _ in store.client.scan_iter("bench:job:*", count=1000)), 1)
        print(f"baseline: one SCAN of the namespace, {baseline:,.0f} ms")
        hour_ago = time.time() - 3600
        listings = {
            "latest 50": lambda: store.recent(limit=50),
            "--state FAILURE": lambda: store.recent(state=JobState.FAILURE, limit=50),
            "--actor ping": lambda: store.recent(actor="ping", limit=50),
            "--actor ping --state FAILURE": lambda: store.recent(actor="ping", state=JobState.FAILURE, limit=50),
            "--since 1h --state SUCCESS": lambda: store.recent(state=JobState.SUCCESS, since=hour_ago, limit=50),
        }
        for name, call in listings.items():
            assert len(call()) == 50, name
            took = median_ms(call, args.rounds)
            print(f"{name:<30} {took:7.2f} ms   {baseline / took:8.0f}x faster than the SCAN")
        memory = store.client.info("memory")["used_memory"] / 2**20
        print(f"Redis memory with the index: {memory:,.0f} MiB")


if __name__ == "__main__":
    main()

"""Order export throughput and worker memory against bare openpyxl.

    .venv/bin/python benchmarks/export.py [--sizes 50000,500000] [--items 3]

For each size it writes that many generated orders (``--items`` lines each) to a JSON Lines
file, starts one worker process on the ``slow`` queue, sends ``export_orders(file=...)`` and
times it to the end of the job; the worker's peak resident memory (VmHWM) is read from /proc
before it stops. The baseline, measured in the same run for each size, is bare openpyxl in
write-only mode writing the same cells (same types and number formats) from values already
in memory, with no reading, validation or pipeline, in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests" / "support")]

from common import REDIS_URL, delete_keys, start_worker, stop_worker  # noqa: E402

os.environ["PIPELINE_REDIS_URL"] = REDIS_URL

from sample_source import make_order  # noqa: E402


def write_orders(path: Path, count: int, items: int) -> None:
    with path.open("w") as handle:
        for n in range(count):
            handle.write(json.dumps(make_order(n, items=items)) + "\n")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid``'s child (the dramatiq worker process), in MB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    kilobytes = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kilobytes / 1024


def pipeline_run(path: Path, exports: Path) -> dict[str, float]:
    from pipeline.actors import export_orders
    from pipeline.broker import broker
    from pipeline.queues import SLOW_QUEUE
    from pipeline.results import AsyncResult

    broker.declare_queue(SLOW_QUEUE, ensure=True)
    broker.flush(SLOW_QUEUE)
    env = {
        "PIPELINE_IMPORT_DIR": str(path.parent),
        "PIPELINE_EXPORT_DIR": str(exports),
        "PIPELINE_EXPORT_REUSE_WINDOW": "0",
    }
    worker = start_worker(["pipeline.actors"], [SLOW_QUEUE], threads=1, env=env)
    try:
        started = time.perf_counter()
        pointer = AsyncResult(export_orders.send(file=path.name).message_id).get(timeout=3600)
        elapsed = time.perf_counter() - started
        rss = peak_rss_mb(worker.pid)
    finally:
        stop_worker(worker)
    Path(pointer["path"]).unlink()
    return {"orders_per_s": pointer["rows"]["Orders"] / elapsed, "peak_rss_mb": rss}


BASELINE = r"""
import datetime, sys, tempfile, time, os
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
count, items = int(sys.argv[1]), int(sys.argv[2])
book = Workbook(write_only=True)
orders, lines = book.create_sheet("Orders"), book.create_sheet("Items")
def money(sheet, value):
    cell = WriteOnlyCell(sheet, value=value)
    cell.number_format = '#,##0.00 "EUR"'
    return cell
started = time.perf_counter()
for n in range(count):
    created = WriteOnlyCell(orders, value=datetime.datetime(2026, 3, 1 + n % 28, n % 24, 15))
    created.number_format = "yyyy-mm-dd hh:mm:ss"
    orders.append([f"A-{n:06d}", created, f"Customer {n}", f"customer{n}@example.com", "paid", "EUR",
                   money(orders, 17.0), items])
    for i in range(items):
        lines.append([f"A-{n:06d}", f"SKU-{n}-{i}", f"Item {i} of order {n}", i + 1, money(lines, i + 1.5),
                      money(lines, (i + 1) * (i + 1.5))])
path = tempfile.mktemp(suffix=".xlsx")
book.save(path)
os.unlink(path)
print(count / (time.perf_counter() - started))
"""


def baseline_run(count: int, items: int) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, "-c", BASELINE, str(count), str(items)], stdout=subprocess.PIPE, text=True
    )
    out = process.stdout.read()
    _, _, usage = os.wait4(process.pid, 0)
    return {"orders_per_s": float(out.strip()), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,500000", help="comma-separated order counts")
    parser.add_argument("--items", type=int, default=3, help="lines per order")
    args = parser.parse_args()
    print(f"orders with {args.items} items each, from a JSON Lines file; one worker process, one thread")
    print(f"{'orders':>9} {'bare openpyxl':>15} {'pipeline':>10} {'ratio':>7} {'worker peak RSS':>16} {'bare RSS':>9}")
    try:
        with tempfile.TemporaryDirectory() as folder:
            imports = Path(folder)
            for size in (int(s) for s in args.sizes.split(",")):
                path = imports / f"orders-{size}.jsonl"
                write_orders(path, size, args.items)
                base = baseline_run(size, args.items)
                ours = pipeline_run(path, imports / "exports")
                path.unlink()
                ratio = ours["orders_per_s"] / base["orders_per_s"]
                print(
                    f"{size:>9} {base['orders_per_s']:>11.0f} o/s {ours['orders_per_s']:>6.0f} o/s {ratio:>6.2f}x"
                    f" {ours['peak_rss_mb']:>13.0f} MB {base['peak_rss_mb']:>6.0f} MB",
                    flush=True,
                )
    finally:
        delete_keys()


if __name__ == "__main__":
    main()

"""Order export throughput and worker memory against bare openpyxl.

    .venv/bin/python benchmarks/export.py [--sizes 50000,500000] [--items 3]

For each size it writes that many generated orders (``--items`` lines each) to a JSON Lines
file, starts one worker process on the ``slow`` queue, sends ``export_orders(file=...)`` and
times it to the end of the job; the worker's peak resident memory (VmHWM) is read from /proc
before it stops. The baseline, measured in the same run for each size, is bare openpyxl in
write-only mode writing the same cells (same types and number formats) from values already
in memory, with no reading, validation or pipeline, in a process of its own; beside it,
XlsxWriter in constant-memory mode writing the same cells (its rate as a ratio to bare
openpyxl). Each baseline reports its own peak memory (VmHWM).
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

    # A connection left idle while a long baseline ran has missed its heartbeats: start afresh.
    del broker.connection
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
rate = count / (time.perf_counter() - started)
status = open("/proc/self/status").read()
print(rate, next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")))
"""

#: The same cells with XlsxWriter in its constant-memory mode: the anchor a user who wants speed
#: would pick (rows written in order, one at a time).
XLSXWRITER = r"""
import datetime, sys, tempfile, time, os
import xlsxwriter
count, items = int(sys.argv[1]), int(sys.argv[2])
path = tempfile.mktemp(suffix=".xlsx")
book = xlsxwriter.Workbook(path, {"constant_memory": True})
orders, lines = book.add_worksheet("Orders"), book.add_worksheet("Items")
money = book.add_format({"num_format": '#,##0.00 "EUR"'})
when = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
started = time.perf_counter()
line = 0
for n in range(count):
    orders.write_row(n, 0, [f"A-{n:06d}"])
    orders.write_datetime(n, 1, datetime.datetime(2026, 3, 1 + n % 28, n % 24, 15), when)
    orders.write_row(n, 2, [f"Customer {n}", f"customer{n}@example.com", "paid", "EUR"])
    orders.write_number(n, 6, 17.0, money)
    orders.write_number(n, 7, items)
for n in range(count):
    for i in range(items):
        lines.write_row(line, 0, [f"A-{n:06d}", f"SKU-{n}-{i}", f"Item {i} of order {n}", i + 1])
        lines.write_number(line, 4, i + 1.5, money)
        lines.write_number(line, 5, (i + 1) * (i + 1.5), money)
        line += 1
book.close()
os.unlink(path)
rate = count / (time.perf_counter() - started)
status = open("/proc/self/status").read()
print(rate, next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")))
"""


def baseline_run(count: int, items: int, script: str = BASELINE) -> dict[str, float]:
    """A baseline script's rate and its own peak memory (VmHWM read by the script itself: a
    child's ``ru_maxrss`` would include its parent's peak before the fork).
    """
    out = subprocess.run([sys.executable, "-c", script, str(count), str(items)], capture_output=True, text=True)
    rate, peak_kb = out.stdout.split()
    return {"orders_per_s": float(rate), "peak_rss_mb": int(peak_kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,500000", help="comma-separated order counts")
    parser.add_argument("--items", type=int, default=3, help="lines per order")
    args = parser.parse_args()
    print(f"orders with {args.items} items each, from a JSON Lines file; one worker process, one thread")
    print(
        f"{'orders':>9} {'bare openpyxl':>15} {'pipeline':>10} {'ratio':>7} {'worker peak RSS':>16} {'bare RSS':>9}"
        f" {'XlsxWriter':>13} {'its RSS':>8}"
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            imports = Path(folder)
            for size in (int(s) for s in args.sizes.split(",")):
                path = imports / f"orders-{size}.jsonl"
                write_orders(path, size, args.items)
                base = baseline_run(size, args.items)
                ours = pipeline_run(path, imports / "exports")
                fast = baseline_run(size, args.items, XLSXWRITER)
                path.unlink()
                ratio = ours["orders_per_s"] / base["orders_per_s"]
                print(
                    f"{size:>9} {base['orders_per_s']:>11.0f} o/s {ours['orders_per_s']:>6.0f} o/s {ratio:>6.2f}x"
                    f" {ours['peak_rss_mb']:>13.0f} MB {base['peak_rss_mb']:>6.0f} MB"
                    f" {fast['orders_per_s'] / base['orders_per_s']:>7.2f}x bare {fast['peak_rss_mb']:>5.0f} MB",
                    flush=True,
                )
    finally:
        delete_keys()


if __name__ == "__main__":
    main()

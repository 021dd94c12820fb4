"""The dashboard's pages against a Redis holding a million records.

    .venv/bin/python benchmarks/dashboard.py [--records 1000000] [--rounds 20]

It starts a Redis server of its own on a free port (the machine's Redis is not touched), fills it
as ``benchmarks/jobs_index.py`` does, then times each page (rendered through the WSGI app, in
this process, 50 jobs a page), each the median of ``--rounds`` requests. The baseline, measured
in the same run on the same data, is ``pipeline jobs``'s own listing of 50 records (the index
and the records, no HTML). The goal for a list page is 300 ms.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests" / "support")]

from jobs_index import filled_store, median_ms  # noqa: E402
from werkzeug.test import Client  # noqa: E402

from pipeline.web import Role, make_app  # noqa: E402

#: The goal for a list page, in milliseconds.
GOAL_MS = 300


def main() -> None:
    """Fill a private Redis, then time the pages against the CLI's listing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with filled_store(args.records, management_url="http://127.0.0.1:1") as store:
        client = Client(make_app(authorize=lambda request: Role.VIEWER, settings=store.settings))
        baseline = median_ms(lambda: store.recent(limit=50), args.rounds)
        print(f"baseline: pipeline jobs' listing of 50 records, {baseline:.2f} ms")
        some_id = store.recent(limit=1)[0]["message_id"]
        pages = {
            "/jobs": "/jobs",
            "/jobs?state=FAILURE": "/jobs?state=FAILURE",
            "/jobs?actor=ping": "/jobs?actor=ping",
            "/jobs?window=1h&state=SUCCESS": "/jobs?window=1h&state=SUCCESS",
            "/jobs?prefix=<the oldest tenth>": "/jobs?prefix=00000000-0000-4000-8000-0000000",
            "/jobs?prefix=ffff (no match: the scan's bound)": "/jobs?prefix=ffff",
            "/jobs?prefix=<a whole id>": f"/jobs?prefix={some_id}",
            "/jobs/<id>": f"/jobs/{some_id}",
            "/live/jobs (poll)": "/live/jobs",
        }
        for name, path in pages.items():
            assert client.get(path).status_code == 200, name
            took = median_ms(lambda path=path: client.get(path), args.rounds)
            verdict = "within" if took <= GOAL_MS else "OVER"
            print(f"{name:<50} {took:8.2f} ms  {took / baseline:6.1f}x the listing  ({verdict} {GOAL_MS} ms)")


if __name__ == "__main__":
    main()

"""An order source plug-in for the tests, as a shop would write one over its database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


def make_order(n: int, *, items: int = 3, name: str | None = None) -> dict[str, Any]:
    """Order number ``n``, with ``items`` lines, the same every time it is made."""
    lines = [
        {"sku": f"SKU-{n}-{i}", "name": f"Item {i} of order {n}", "quantity": i + 1, "unit_price": f"{i + 1}.50"}
        for i in range(items)
    ]
    return {
        "id": f"A-{n:06d}",
        "created_at": f"2026-03-{1 + n % 28:02d}T{n % 24:02d}:15:00+00:00",
        "customer_name": name or f"Customer {n}",
        "customer_email": f"customer{n}@example.com",
        "status": "paid",
        "currency": "EUR",
        "total": str(sum((i + 1) * (i + 1.5) for i in range(items))),
        "items": lines,
    }


class _Orders:
    """Orders ``0..count-1``, sized, optionally slow (seconds per order)."""

    def __init__(self, count: int, pause: float) -> None:
        self.count = count
        self.pause = pause

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for n in range(self.count):
            if self.pause:
                time.sleep(self.pause)
            yield make_order(n)


def iter_orders(filter: dict[str, Any]) -> _Orders:
    """The plug-in: ``filter`` gives ``count`` (default 10) and ``pause`` (default 0)."""
    return _Orders(int(filter.get("count", 10)), float(filter.get("pause", 0)))

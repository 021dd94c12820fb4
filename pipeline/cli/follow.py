"""Following a job until it ends, with a live progress bar drawn by rich."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from pipeline.errors import JobTimeout
from pipeline.job_record import JobRecord, is_progress_count
from pipeline.printable import printable
from pipeline.results import AsyncResult

#: Seconds between two looks at a running job's progress.
TICK = 0.25
#: Seconds a read of a record may take past a caller's deadline (the job may end at it).
READ_MARGIN = 0.5


def read_time(deadline: float | None) -> float | None:
    """Seconds a read of a record may take, to end by ``deadline`` (a ``time.monotonic()``, or
    None: as long as Redis may take) and a moment: a wait the caller bounds stays bounded when
    Redis does not answer.
    """
    return None if deadline is None else max(deadline - time.monotonic(), 0.0) + READ_MARGIN


def follow(message_id: str, *, timeout: float | None = None, console: Console | None = None) -> JobRecord | None:
    """Show job ``message_id``'s progress until it ends (or ``timeout`` seconds pass).

    The bar shows done / total, the rate, the time left and the phase the job reports; on a
    terminal it is redrawn in place, elsewhere (a pipe, a log) it is left out and only the end
    is printed by the caller.

    Returns:
      The job's last record; None when it has none (an unknown id answers at once).
    """
    handle = AsyncResult(message_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    if handle.info(read_time(deadline)) is None:
        return None
    console = console or Console(file=sys.stderr)
    columns = (
        # The phase is the job's text: shown as it is, never read as markup.
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[speed_text]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"{message_id[:8]} QUEUED", total=None, speed_text="")
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                handle.get(timeout=min(TICK, left) if left is not None else TICK, propagate=False)
                break
            except JobTimeout:
                pass
            record = handle.info(read_time(deadline))
            if record is None:
                break
            progress: dict[str, Any] = dict(record.get("progress") or {})
            phase = f" {printable(progress['phase'], 60)}" if progress.get("phase") else ""
            bar.update(
                task,
                description=f"{message_id[:8]} {record['state']}{phase}",
                completed=_count(progress.get("done")) or 0,
                total=_count(progress.get("total")),
            )
            speed = bar.tasks[0].speed
            bar.update(task, speed_text=f"{speed:,.0f}/s" if speed else "")
    return handle.info(read_time(deadline))


def _count(value: Any) -> float | None:
    """A progress count as the bar takes it; None for what a report cannot hold (a record
    written by hand, or by another program).
    """
    return value if is_progress_count(value) else None

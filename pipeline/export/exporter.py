"""Order exports: validated orders streamed into an ``.xlsx`` file, stored safely, pointed to.

The workbook (see :mod:`~pipeline.export.workbook`) is written under a temporary name in
``PIPELINE_EXPORT_DIR`` and renamed to its final name (the job's sanitised name plus its message
id) only when complete, so no reader ever sees half a file under the final name. This package
knows nothing of Dramatiq or Redis: what it needs of the store comes through :class:`ExportReuse`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, cast
from urllib.parse import quote

from pipeline.errors import JobStopped
from pipeline.export import scratch
from pipeline.export.orders import Order, choose_columns, validate_order
from pipeline.export.sources import OrderSource, open_source
from pipeline.export.workbook import WorkbookWriter
from pipeline.settings import Settings
from pipeline.timestamps import now_iso

#: Orders written between two checks for revocation.
BATCH_SIZE = 500
#: Seconds between two progress reports, at most one report per interval.
PROGRESS_INTERVAL = 0.5
#: Longest sanitised job name kept in a file name.
MAX_NAME_LENGTH = 60
#: Seconds past the export time limit after which a scratch folder surely belongs to a dead job.
SWEEP_MARGIN = 60

#: Reports progress: rows done, total when known, phase (what it returns is ignored).
ProgressCallback = Callable[[int, int | None, str], object]


class ExportPointer(TypedDict):
    """Where a finished export is and what it holds: the result of an ``export_orders`` job."""

    path: str
    url: str
    file_name: str
    #: Rows per sheet (``Orders``, ``Items``), headers not counted.
    rows: dict[str, int]
    #: The titles of the sheets each took (``Items``, ``Items 2``... past Excel's row limit).
    sheets: dict[str, list[str]]
    #: Bytes.
    size: int
    sha256: str
    created_at: str
    #: True when an earlier identical request's file was handed out.
    reused: bool
    #: Cells whose text was cut to fit Excel's limit, with a visible marker.
    cut_cells: int
    #: Characters XML cannot hold, replaced by U+FFFD.
    replaced_characters: int
    #: The ``notify`` mail: ``to`` and the mail job's ``message_id``.
    notified: NotRequired[dict[str, str]]


class ExportReuse(Protocol):
    """What the exporter needs from the store: pointers of recent exports by request digest."""

    def recall(self, digest: str) -> Mapping[str, Any] | None:
        """The pointer remembered for the request ``digest``, if any."""

    def remember(self, digest: str, pointer: dict[str, Any]) -> None:
        """Remember ``pointer`` for the request ``digest``."""


def safe_name(name: str) -> str:
    """``name`` reduced to letters, digits, ``-`` and ``_`` (at most :data:`MAX_NAME_LENGTH`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:MAX_NAME_LENGTH].strip("-_")
    return cleaned or "orders"


def export_file_name(name: str, message_id: str) -> str:
    """The final file name of an export: sanitised job name, message id, ``.xlsx``."""
    return f"{safe_name(name)}-{safe_name(message_id)}.xlsx"


def validated(source: OrderSource) -> Iterator[Order]:
    """The source's orders, each validated (the first bad one raises ``InvalidOrder``)."""
    for row, raw in source.rows():
        yield validate_order(raw, row)


def file_digest(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Exporter:
    """Runs order exports into ``PIPELINE_EXPORT_DIR`` and remembers them for reuse.

    Parameters:
      settings: Export and import folders, base URL, plug-in, reuse window.
      reuse: Remembers recent exports; None turns reuse off (as in tests of the file itself).
    """

    def __init__(self, settings: Settings, reuse: ExportReuse | None) -> None:
        self.settings = settings
        self.reuse = reuse if settings.export_reuse_window > 0 else None
        # What jobs that died (killed, out of time) left: none of them can still be running.
        scratch.sweep(settings.export_dir, settings.export_time_limit + SWEEP_MARGIN)

    def export(
        self,
        job_id: str,
        *,
        orders: list[Any] | None = None,
        file: str | None = None,
        filter: Mapping[str, Any] | None = None,
        columns: list[str] | None = None,
        name: str = "orders",
        progress: ProgressCallback | None = None,
        revoked: Callable[[], bool] | None = None,
    ) -> ExportPointer:
        """Export the orders a request names into one ``.xlsx`` file and point to it.

        An identical request (same source, filter and columns) within the reuse window gets
        the earlier file's pointer, while that file exists.

        Parameters:
          job_id: The job's message id, part of the file name.
          orders, file, filter: The source (see :mod:`pipeline.export.sources`).
          columns: The Orders sheet's columns; all when omitted.
          name: A name for the file, sanitised.
          progress: Called with (rows done, total, phase) at most every
            :data:`PROGRESS_INTERVAL` seconds.
          revoked: Asked between batches and once more after the file is saved, before it is put
            in place; True stops the export and removes its file.

        Returns:
          The pointer: ``path``, ``url``, ``file_name``, ``rows`` per sheet, ``sheets`` (the
          sheets each took), ``size``, ``sha256``, ``created_at``, ``reused``, and the
          ``cut_cells`` and ``replaced_characters`` Excel's limits cost.

        Raises:
          InvalidOrder: A bad row; no file is left behind.
          SourceError: The source cannot be used.
          JobStopped: ``revoked()`` said so; no file is left behind.
        """
        chosen = choose_columns(columns)
        source = open_source(
            orders=orders,
            file=file,
            filter=filter,
            import_dir=self.settings.import_dir,
            plugin=self.settings.order_source,
        )
        digest = self._request_digest(source, chosen)
        earlier = self._earlier(digest)
        if earlier is not None:
            return earlier
        final = self.settings.export_dir / export_file_name(name, job_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        # What earlier runs of the job left, when they died; a run still going on elsewhere (its
        # worker cut off from RabbitMQ, not dead) keeps its files and writes the same file.
        for token in scratch.dead_runs(self.settings.export_dir, job_id):
            self._part(final, token).unlink(missing_ok=True)
        stop = revoked or _never
        with scratch.scratch_folder(self.settings.export_dir, job_id) as run:
            part = self._part(final, run.token)
            try:
                writer = self._write(source, chosen, part, progress or _no_progress, stop)
                # Revoked while saving: no file, no reuse entry.
                if stop():
                    raise JobStopped(f"export stopped after {writer.order_rows} orders, saved")
                os.replace(part, final)
            finally:
                part.unlink(missing_ok=True)
        pointer: ExportPointer = {
            "path": str(final.resolve()),
            "url": self._url(final),
            "file_name": final.name,
            "rows": {"Orders": writer.order_rows, "Items": writer.item_rows},
            "sheets": {"Orders": writer.orders.titles, "Items": writer.items.titles},
            "size": final.stat().st_size,
            "sha256": file_digest(final),
            "created_at": now_iso(),
            "reused": False,
            "cut_cells": writer.cut_cells,
            "replaced_characters": writer.replaced_characters,
        }
        self._remember(digest, pointer)
        return pointer

    def _write(
        self,
        source: OrderSource,
        columns: list[str],
        part: Path,
        progress: ProgressCallback,
        revoked: Callable[[], bool],
    ) -> WorkbookWriter:
        writer = WorkbookWriter(columns)
        reported = time.monotonic()
        progress(0, source.total, "writing")
        for order in validated(source):
            writer.add(order)
            done = writer.order_rows
            if done % BATCH_SIZE == 0:
                if revoked():
                    raise JobStopped(f"export stopped after {done} orders")
                if time.monotonic() - reported >= PROGRESS_INTERVAL:
                    reported = time.monotonic()
                    progress(done, source.total, "writing")
        progress(writer.order_rows, source.total, "saving")
        writer.save(part)
        return writer

    def _url(self, path: Path) -> str:
        base = self.settings.export_base_url
        if base:
            return base.rstrip("/") + "/" + quote(path.name)
        return path.resolve().as_uri()

    @staticmethod
    def _part(final: Path, token: str) -> Path:
        """Where run ``token`` writes ``final`` before it is complete."""
        return final.with_name(f".{final.name}.{token}.part")

    def _request_digest(self, source: OrderSource, columns: list[str]) -> str:
        # The folder is part of the request: a deployment sharing the Redis but writing
        # elsewhere never gets a path it cannot reach.
        folder = str(self.settings.export_dir.resolve())
        request = json.dumps(
            {"source": source.description, "columns": columns, "folder": folder}, sort_keys=True, default=str
        )
        return hashlib.sha256(request.encode()).hexdigest()

    def _earlier(self, digest: str) -> ExportPointer | None:
        if self.reuse is None:
            return None
        stored = self.reuse.recall(digest)
        if stored is None:
            return None
        pointer = cast("ExportPointer", dict(stored))
        path = Path(pointer["path"])
        if path.parent != self.settings.export_dir.resolve():
            return None
        if not path.is_file() or path.stat().st_size != pointer["size"]:
            return None
        return {**pointer, "reused": True}

    def _remember(self, digest: str, pointer: ExportPointer) -> None:
        if self.reuse is not None:
            self.reuse.remember(digest, dict(pointer))


def _no_progress(done: int, total: int | None, phase: str) -> None:
    """Progress is not reported."""


def _never() -> bool:
    return False

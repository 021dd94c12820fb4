"""Order exports: validated orders streamed into an ``.xlsx`` file, stored safely, pointed to.

The workbook is written with openpyxl's write-only mode, so memory stays flat whatever the
number of orders: an ``Orders`` sheet (one row per order, the job's chosen columns) and an
``Items`` sheet (one row per order line). Cells are typed: real Excel dates, numbers with a
currency format; text that a spreadsheet would run as a formula is stored as text.

The file is written under a temporary name in ``PIPELINE_EXPORT_DIR`` and renamed to its
final name (the job's sanitised name plus its message id) only when complete, so no reader
ever sees half a file under the final name. This module knows nothing of Dramatiq.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from pipeline.errors import JobRevoked
from pipeline.orders import ITEM_COLUMNS, ORDER_COLUMNS, Order, choose_columns, validate_order
from pipeline.records import RecordStore, now_iso
from pipeline.settings import Settings
from pipeline.sources import OrderSource, open_source

#: Prefix of the keys that remember recent exports for reuse; the key ends in the request's hash.
REUSE_PREFIX = "pipeline:export:"
#: Orders written between two checks for revocation.
BATCH_SIZE = 500
#: Seconds between two progress reports, at most one report per interval.
PROGRESS_INTERVAL = 0.5
#: Characters that make a spreadsheet treat text as a formula (OWASP's CSV-injection list).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
#: Longest sanitised job name kept in a file name.
MAX_NAME_LENGTH = 60
#: Excel's format of the Created column.
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"

#: Reports progress: rows done, total when known, phase (what it returns is ignored).
ProgressCallback = Callable[[int, int | None, str], object]


def safe_name(name: str) -> str:
    """``name`` reduced to letters, digits, ``-`` and ``_`` (at most :data:`MAX_NAME_LENGTH`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:MAX_NAME_LENGTH].strip("-_")
    return cleaned or "orders"


def export_file_name(name: str, message_id: str) -> str:
    """The final file name of an export: sanitised job name, message id, ``.xlsx``."""
    return f"{safe_name(name)}-{safe_name(message_id)}.xlsx"


def text_cell(sheet: WriteOnlyWorksheet, text: str) -> Any:
    """``text`` as a cell value, stored as text even when a spreadsheet would run it as a formula.

    A text that starts with a formula trigger becomes a string cell with Excel's quote prefix
    (as if typed after an apostrophe): shown as written, never evaluated.
    """
    if text and text.startswith(FORMULA_TRIGGERS):
        cell = WriteOnlyCell(sheet, value=text)
        cell.data_type = "s"
        cell.quotePrefix = True
        return cell
    return text


class WorkbookWriter:
    """Streams orders into a two-sheet workbook in write-only mode.

    Parameters:
      columns: The Orders sheet's column names (see :data:`pipeline.orders.ORDER_COLUMNS`).
    """

    def __init__(self, columns: list[str]) -> None:
        self.columns = [ORDER_COLUMNS[name] for name in columns]
        self.workbook = Workbook(write_only=True)
        self.orders = self._sheet("Orders", [(c.header, c.width) for c in self.columns])
        self.items = self._sheet("Items", list(ITEM_COLUMNS))
        self.order_rows = 0
        self.item_rows = 0
        self._money_formats: dict[str, str] = {}

    def _sheet(self, title: str, headers: list[tuple[str, float]]) -> WriteOnlyWorksheet:
        sheet = self.workbook.create_sheet(title)
        # Write-only sheets take their view and widths before the first row.
        sheet.freeze_panes = "A2"
        for index, (_, width) in enumerate(headers, 1):
            sheet.column_dimensions[get_column_letter(index)].width = width
        bold = Font(bold=True)
        header_cells = []
        for header, _ in headers:
            cell = WriteOnlyCell(sheet, value=header)
            cell.font = bold
            header_cells.append(cell)
        sheet.append(header_cells)
        return sheet

    def _money(self, amount: Any, currency: str, sheet: WriteOnlyWorksheet) -> WriteOnlyCell:
        number_format = self._money_formats.get(currency)
        if number_format is None:
            number_format = self._money_formats[currency] = f'#,##0.00 "{currency}"'
        cell = WriteOnlyCell(sheet, value=amount)
        cell.number_format = number_format
        return cell

    def add(self, order: Order) -> None:
        """Append one order to the Orders sheet and its lines to the Items sheet."""
        row = []
        for column in self.columns:
            value = column.value(order)
            if column.kind == "text":
                row.append(text_cell(self.orders, value))
            elif column.kind == "money":
                row.append(self._money(value, order.currency, self.orders))
            elif column.kind == "datetime":
                cell = WriteOnlyCell(self.orders, value=value)
                cell.number_format = DATETIME_FORMAT
                row.append(cell)
            else:
                row.append(value)
        self.orders.append(row)
        self.order_rows += 1
        order_id = text_cell(self.items, order.id)
        for item in order.items:
            self.items.append(
                [
                    order_id,
                    text_cell(self.items, item.sku),
                    text_cell(self.items, item.name),
                    item.quantity,
                    self._money(item.unit_price, order.currency, self.items),
                    self._money(item.unit_price * item.quantity, order.currency, self.items),
                ]
            )
        self.item_rows += len(order.items)

    def save(self, path: Path) -> None:
        """Set each sheet's autofilter over its rows and write the workbook to ``path``."""
        self.orders.auto_filter.ref = f"A1:{get_column_letter(len(self.columns))}{self.order_rows + 1}"
        self.items.auto_filter.ref = f"A1:{get_column_letter(len(ITEM_COLUMNS))}{self.item_rows + 1}"
        self.workbook.save(path)


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
      store: The job records' store, whose Redis remembers recent exports; None turns reuse
        off (an exporter without Redis, as in tests of the file itself).
    """

    def __init__(self, settings: Settings, store: RecordStore | None) -> None:
        self.settings = settings
        self.store = store

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
    ) -> dict[str, Any]:
        """Export the orders a request names into one ``.xlsx`` file and point to it.

        An identical request (same source, filter and columns) within the reuse window gets
        the earlier file's pointer, while that file exists.

        Parameters:
          job_id: The job's message id, part of the file name.
          orders, file, filter: The source (see :mod:`pipeline.sources`).
          columns: The Orders sheet's columns; all when omitted.
          name: A name for the file, sanitised.
          progress: Called with (rows done, total, phase) at most every
            :data:`PROGRESS_INTERVAL` seconds.
          revoked: Asked between batches; True stops the export and removes its file.

        Returns:
          The pointer: ``path``, ``url``, ``file_name``, ``rows`` per sheet, ``size``,
          ``sha256``, ``created_at``, ``reused``.

        Raises:
          InvalidOrder: A bad row; no file is left behind.
          SourceError: The source cannot be used.
          JobRevoked: ``revoked()`` said so; no file is left behind.
        """
        chosen = choose_columns(columns)
        source = open_source(
            orders=orders,
            file=file,
            filter=filter,
            import_dir=self.settings.import_dir,
            plugin=self.settings.order_source,
        )
        reuse_key = self._reuse_key(source, chosen)
        earlier = self._earlier(reuse_key)
        if earlier is not None:
            return earlier
        final = self.settings.export_dir / export_file_name(name, job_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_parts_of(final)
        part = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        try:
            rows = self._write(source, chosen, part, progress or _no_progress, revoked or _never)
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)
        pointer = {
            "path": str(final.resolve()),
            "url": self._url(final),
            "file_name": final.name,
            "rows": rows,
            "size": final.stat().st_size,
            "sha256": file_digest(final),
            "created_at": now_iso(),
            "reused": False,
        }
        self._remember(reuse_key, pointer)
        return pointer

    def _write(
        self,
        source: OrderSource,
        columns: list[str],
        part: Path,
        progress: ProgressCallback,
        revoked: Callable[[], bool],
    ) -> dict[str, int]:
        writer = WorkbookWriter(columns)
        reported = time.monotonic()
        progress(0, source.total, "writing")
        for order in validated(source):
            writer.add(order)
            done = writer.order_rows
            if done % BATCH_SIZE == 0:
                if revoked():
                    raise JobRevoked(f"export stopped after {done} orders: the job was revoked")
                if time.monotonic() - reported >= PROGRESS_INTERVAL:
                    reported = time.monotonic()
                    progress(done, source.total, "writing")
        progress(writer.order_rows, source.total, "saving")
        writer.save(part)
        return {"Orders": writer.order_rows, "Items": writer.item_rows}

    def _url(self, path: Path) -> str:
        base = self.settings.export_base_url
        if base:
            return base.rstrip("/") + "/" + quote(path.name)
        return path.resolve().as_uri()

    @staticmethod
    def _remove_parts_of(final: Path) -> None:
        """Remove what an earlier, interrupted attempt of the same job left behind."""
        for stale in final.parent.glob(f".{final.name}.*.part"):
            stale.unlink(missing_ok=True)

    @staticmethod
    def _reuse_key(source: OrderSource, columns: list[str]) -> str:
        request = json.dumps({"source": source.description, "columns": columns}, sort_keys=True, default=str)
        return REUSE_PREFIX + hashlib.sha256(request.encode()).hexdigest()

    @property
    def _reusing(self) -> bool:
        return self.store is not None and self.settings.export_reuse_window > 0

    def _earlier(self, key: str) -> dict[str, Any] | None:
        if not self._reusing:
            return None
        with self.store.translated():
            stored = self.store.client.get(key)
        if stored is None:
            return None
        pointer = json.loads(stored)
        path = Path(pointer["path"])
        if not path.is_file() or path.stat().st_size != pointer["size"]:
            return None
        return {**pointer, "reused": True}

    def _remember(self, key: str, pointer: dict[str, Any]) -> None:
        if self._reusing:
            with self.store.translated():
                self.store.client.set(key, json.dumps(pointer), ex=self.settings.export_reuse_window)


def _no_progress(done: int, total: int | None, phase: str) -> None:
    """Progress is not reported."""


def _never() -> bool:
    return False

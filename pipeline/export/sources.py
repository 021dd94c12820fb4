"""Where an export's orders come from: an inline list, a file, or the deploying shop's plug-in.

Every source yields ``(row, order dict)`` pairs (``row`` is what errors name: the line of a
file, the position in a list) and may know its total up front. The orders are validated by
:func:`pipeline.export.orders.validate_order`, not here.

- **inline**: ``export_orders.send(orders=[...])``, up to :data:`INLINE_LIMIT` orders.
- **file**: ``export_orders.send(file="2026-q3.jsonl")``: JSON Lines (one order per line) or
  CSV (one line per order item, the order's fields repeated on each: ``id``, ``created_at``,
  ``customer_name``, ``customer_email``, ``status``, ``currency``, ``total``, ``sku``,
  ``item_name``, ``quantity``, ``unit_price``; an order's lines are consecutive), by a path
  relative to ``PIPELINE_IMPORT_DIR``, which it may not leave.
- **plug-in**: ``export_orders.send(filter={...})`` with ``PIPELINE_ORDER_SOURCE`` set to a
  dotted path ``package.module:function``; the function takes the filter dict and returns an
  iterable of order dicts (with ``len()`` when it knows its size).
"""

from __future__ import annotations

import codecs
import csv
import importlib
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.errors import SourceError, shown

#: Most orders an export may carry inline in its message; more belong in a file or a plug-in.
INLINE_LIMIT = 1_000
#: File extensions and the format each means.
FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: Longest path of an order file, in characters.
MAX_PATH_LENGTH = 4096
#: Largest CSV field read, in characters (Python's default is 131,072); a cell holds 32,767.
MAX_CSV_FIELD = 1 << 20
#: Longest line of an order file read, in bytes: one order (a CSV line is one of its items).
MAX_LINE_BYTES = 16 << 20
#: CSV columns that hold an item's fields, and the item field each fills.
CSV_ITEM_FIELDS = {"sku": "sku", "item_name": "name", "quantity": "quantity", "unit_price": "unit_price"}


@dataclass
class OrderSource:
    """The orders of one export: where they come from, how many, and the rows themselves."""

    #: What the source is, for the reuse key and the record: JSON-safe.
    description: dict[str, Any]
    #: How many orders, when known before reading them.
    total: int | None
    #: Yields ``(row, order dict)``.
    rows: Callable[[], Iterator[tuple[int, Any]]]


def check_request(orders: Any = None, file: Any = None, filter: Any = None) -> None:
    """Check an export request's source arguments at send time, before anything is queued.

    Raises:
      SourceError: Both ``orders`` and ``file`` given, ``orders`` not a list or over
        :data:`INLINE_LIMIT`, ``file`` not a path (a string, without NUL, at most
        :data:`MAX_PATH_LENGTH` characters) or of no format of :data:`FILE_FORMATS`,
        ``filter`` not an object.
    """
    _check_form(orders, file, filter)
    if file is not None and Path(file).suffix.lower() not in FILE_FORMATS:
        raise SourceError(_unknown_format(file))


def _check_form(orders: Any, file: Any, filter: Any) -> None:
    if orders is not None and file is not None:
        raise SourceError("give either orders (inline) or file, not both")
    if orders is not None:
        if not isinstance(orders, list):
            raise SourceError(f"orders must be a list of order objects, not {type(orders).__name__}")
        if len(orders) > INLINE_LIMIT:
            raise SourceError(
                f"{len(orders)} orders are too many to send inline (at most {INLINE_LIMIT}): write them to a "
                "JSON Lines file under PIPELINE_IMPORT_DIR and pass file=..., or serve them from the "
                "PIPELINE_ORDER_SOURCE plug-in and pass filter=..."
            )
    if file is not None and (not isinstance(file, str) or "\0" in file or not file or len(file) > MAX_PATH_LENGTH):
        raise SourceError(f"file must be a path relative to PIPELINE_IMPORT_DIR, not {shown(file)}")
    if filter is not None and not isinstance(filter, dict):
        raise SourceError(f"filter must be an object, not {type(filter).__name__}")


def open_source(
    *,
    orders: list[Any] | None,
    file: str | None,
    filter: Mapping[str, Any] | None,
    import_dir: Path,
    plugin: str | None,
) -> OrderSource:
    """The source an export request names.

    Raises:
      SourceError: The request or the configured source cannot be used.
    """
    # The file's format is checked once its path is resolved: a path out of the folder is
    # named as such first.
    _check_form(orders, file, filter)
    if orders is not None:
        return OrderSource({"kind": "inline", "orders": orders}, len(orders), lambda: enumerate(orders, 1))
    if file is not None:
        return _file_source(file, import_dir)
    return _plugin_source(plugin, dict(filter or {}))


def resolve_import_path(name: str, import_dir: Path) -> Path:
    """``name`` under ``import_dir``, refusing any path that leads out of it.

    Raises:
      SourceError: The path leaves the import folder, or no such file exists.
    """
    root = import_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise SourceError(f"file {name!r} is outside the import folder {root} (PIPELINE_IMPORT_DIR)")
    if not path.is_file():
        raise SourceError(f"file {name!r} does not exist in the import folder {root}")
    return path


def _file_source(name: str, import_dir: Path) -> OrderSource:
    path = resolve_import_path(name, import_dir)
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SourceError(_unknown_format(name))
    stat = path.stat()
    description = {"kind": "file", "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if kind == "jsonl":
        return OrderSource(description, _count_lines(path), lambda: _read_jsonl(path))
    return OrderSource(description, None, lambda: _read_csv(path))


def _unknown_format(name: str) -> str:
    return f"file {shown(name)}: unknown format; use {', '.join(FILE_FORMATS)}"


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 text file (a byte-order mark, as Excel writes, is skipped), numbered.

    Raises:
      SourceError: A line is not UTF-8 text (a binary file, another encoding), or is longer than
        :data:`MAX_LINE_BYTES` (a file with no line breaks would be read whole), naming it.
    """
    with path.open("rb") as handle:
        for line_number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise SourceError(
                    f"file {path.name}: line {line_number} is longer than {MAX_LINE_BYTES >> 20} MiB: one order "
                    "per line"
                )
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"file {path.name}: line {line_number} is not UTF-8 text ({exc.reason} at byte {exc.start + 1})"
                ) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for line_number, line in _lines(path):
        if not line.strip():
            continue
        try:
            # Amounts are read as the decimals they are written as, never as binary floats.
            yield line_number, json.loads(line, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise SourceError(f"row {line_number}: not valid JSON ({exc.msg})") from None
        except ValueError:  # an integer of more digits than Python reads
            raise SourceError(
                f"row {line_number}: a number of more than {sys.get_int_max_str_digits():,} digits"
            ) from None
        except RecursionError:
            raise SourceError(f"row {line_number}: JSON nested too deep to read") from None


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(MAX_CSV_FIELD)
    reader = csv.DictReader(line for _, line in _lines(path))
    try:
        missing = {"id", *CSV_ITEM_FIELDS} - set(reader.fieldnames or ())
        if missing:
            raise SourceError(f"file {path.name}: missing CSV column(s) {', '.join(sorted(missing))}")
        numbered = ((reader.line_num, line) for line in reader)
        for order_id, group in itertools.groupby(numbered, key=lambda pair: pair[1]["id"]):
            lines = list(group)
            first_line, first = lines[0]
            order = {k: v for k, v in first.items() if k not in CSV_ITEM_FIELDS}
            order["id"] = order_id
            order["items"] = [{field: line[column] for column, field in CSV_ITEM_FIELDS.items()} for _, line in lines]
            yield first_line, order
    except csv.Error as exc:
        raise SourceError(f"file {path.name}: line {reader.line_num}: {exc}") from None


def load_plugin(dotted: str) -> Callable[[dict[str, Any]], Iterable[Any]]:
    """The function ``package.module:function`` names.

    Raises:
      SourceError: The path is malformed, the module does not import, or the name is not a
        callable; the message says which dotted path was tried.
    """
    module_name, sep, attribute = dotted.partition(":")
    if not sep or not module_name or not attribute:
        raise SourceError(f"PIPELINE_ORDER_SOURCE {dotted!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise SourceError(f"order source {dotted!r}: importing {module_name!r} failed: {exc!r}") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise SourceError(f"order source {dotted!r}: {module_name!r} has no callable {attribute!r}")
    return function


def _plugin_source(dotted: str | None, filter: dict[str, Any]) -> OrderSource:
    if not dotted:
        raise SourceError("no orders and no file given, and no PIPELINE_ORDER_SOURCE plug-in configured")
    # What the plug-in raises while it runs (its database is down, say) is left as it is, to
    # be retried; only a plug-in that cannot be loaded at all is a permanent failure.
    orders = load_plugin(dotted)(dict(filter))
    total = len(orders) if isinstance(orders, Sized) else None
    return OrderSource({"kind": "plugin", "source": dotted, "filter": filter}, total, lambda: enumerate(orders, 1))

"""The workbook of an export: orders streamed into two typed sheets in write-only mode.

openpyxl's write-only mode keeps memory flat whatever the number of orders: an ``Orders`` sheet
(one row per order, the job's chosen columns) and an ``Items`` sheet (one row per order line).
Cells are typed: real Excel dates, numbers with a currency format; text that a spreadsheet
would run as a formula is stored as text.

Nothing is lost silently to Excel's limits: a sheet that fills up (1,048,576 rows) goes on in
``Items 2``, ``Items 3``... with the same header; a text longer than a cell holds (32,767 UTF-16
code units) is cut with a visible marker; characters XML cannot hold are replaced by U+FFFD. The
writer counts the cells it cut and the characters it replaced, for the export's pointer.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from pipeline.export.orders import ITEM_COLUMNS, ORDER_COLUMNS, Order

#: Characters that make a spreadsheet treat text as a formula (OWASP's CSV-injection list).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
#: Excel's format of the Created column.
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
#: Rows a sheet holds, its header included (Excel's limit).
MAX_SHEET_ROWS = 1_048_576
#: UTF-16 code units a cell holds (Excel's limit).
MAX_CELL_UNITS = 32_767
#: What ends a text cut to fit a cell.
CUT_MARKER = " […cut]"
#: What replaces a character XML cannot hold.
REPLACEMENT = "\ufffd"
#: The characters XML 1.0 cannot hold: the controls but tab and line ends (openpyxl's
#: ``ILLEGAL_CHARACTERS_RE``), and what the XML writer refuses besides: the lone surrogates
#: (which are not text: UTF-8 cannot encode them) and the non-characters U+FFFE and U+FFFF.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def utf16_units(text: str) -> int:
    """How many UTF-16 code units ``text`` takes (what Excel counts): two for a character past U+FFFF."""
    return len(text) + sum(1 for character in text if ord(character) > 0xFFFF)


class SheetSeries:
    """One logical sheet spread over as many sheets as its rows need: ``Items``, ``Items 2``...

    Parameters:
      workbook: The write-only workbook.
      title: The first sheet's title.
      headers: Each column's header and width, repeated on every sheet.
    """

    def __init__(self, workbook: Workbook, title: str, headers: list[tuple[str, float]]) -> None:
        self.workbook = workbook
        self.title = title
        self.headers = headers
        self.sheets: list[tuple[WriteOnlyWorksheet, int]] = []
        self.rows = 0
        self._rows_here = 0
        self.current = self._add_sheet()
        #: The first sheet, whose cells serve every sheet (styles belong to the workbook).
        self.first = self.current

    def _add_sheet(self) -> WriteOnlyWorksheet:
        if self.sheets:
            self.sheets[-1] = (self.sheets[-1][0], self._rows_here)
        title = self.title if not self.sheets else f"{self.title} {len(self.sheets) + 1}"
        sheet = self.workbook.create_sheet(title)
        # Write-only sheets take their view and widths before the first row.
        sheet.freeze_panes = "A2"
        for index, (_, width) in enumerate(self.headers, 1):
            sheet.column_dimensions[get_column_letter(index)].width = width
        bold = Font(bold=True)
        header_cells = []
        for header, _ in self.headers:
            cell = WriteOnlyCell(sheet, value=header)
            cell.font = bold
            header_cells.append(cell)
        sheet.append(header_cells)
        self.sheets.append((sheet, 0))
        self._rows_here = 0
        return sheet

    def append(self, row: list[Any]) -> None:
        """Add a row, on a new sheet when this one is full."""
        if self._rows_here == MAX_SHEET_ROWS - 1:
            self.current = self._add_sheet()
        self.current.append(row)
        self._rows_here += 1
        self.rows += 1

    def set_filters(self) -> None:
        """Put an autofilter over each sheet's rows (before saving)."""
        self.sheets[-1] = (self.sheets[-1][0], self._rows_here)
        last_column = get_column_letter(len(self.headers))
        for sheet, rows in self.sheets:
            sheet.auto_filter.ref = f"A1:{last_column}{rows + 1}"

    @property
    def titles(self) -> list[str]:
        """The titles of the sheets it took."""
        return [sheet.title for sheet, _ in self.sheets]


class WorkbookWriter:
    """Streams orders into a two-sheet workbook in write-only mode.

    Parameters:
      columns: The Orders sheet's column names (see :data:`pipeline.export.orders.ORDER_COLUMNS`).
    """

    def __init__(self, columns: list[str]) -> None:
        self.columns = [ORDER_COLUMNS[name] for name in columns]
        self.workbook = Workbook(write_only=True)
        self.orders = SheetSeries(self.workbook, "Orders", [(c.header, c.width) for c in self.columns])
        self.items = SheetSeries(self.workbook, "Items", list(ITEM_COLUMNS))
        #: Cells whose text was cut to fit.
        self.cut_cells = 0
        #: Characters replaced because XML cannot hold them.
        self.replaced_characters = 0
        self._money_formats: dict[str, str] = {}
        self._cells: dict[tuple[str, str], WriteOnlyCell] = {}

    @property
    def order_rows(self) -> int:
        """Orders written."""
        return self.orders.rows

    @property
    def item_rows(self) -> int:
        """Order lines written."""
        return self.items.rows

    def text(self, text: str) -> Any:
        """``text`` as a cell value that loses nothing silently.

        Characters XML cannot hold are replaced (and counted); a text longer than a cell holds is
        cut with :data:`CUT_MARKER` (and counted); a text that starts with a formula trigger
        becomes a string cell with Excel's quote prefix (as if typed after an apostrophe): shown as
        written, never evaluated.
        """
        # Every character XML cannot hold is unprintable: the quick test spares the search.
        if not text.isprintable() and NOT_XML.search(text):
            text, replaced = NOT_XML.subn(REPLACEMENT, text)
            self.replaced_characters += replaced
        # No more characters than half the limit cannot take more units than the limit.
        if len(text) > MAX_CELL_UNITS // 2 and utf16_units(text) > MAX_CELL_UNITS:
            text = _cut(text)
            self.cut_cells += 1
        if text and text.startswith(FORMULA_TRIGGERS):
            cell = WriteOnlyCell(self.orders.first, value=text)
            cell.data_type = "s"
            cell.quotePrefix = True
            return cell
        return text

    def _styled(self, column: str, number_format: str, value: Any) -> WriteOnlyCell:
        """The cell of ``column`` holding ``value`` in ``number_format``.

        A write-only sheet writes a row's cells as it is appended, so one cell per column and
        format serves every row: it is styled once, not once per row (styling a cell costs more
        than writing it).
        """
        cell = self._cells.get((column, number_format))
        if cell is None:
            cell = self._cells[column, number_format] = WriteOnlyCell(self.orders.first)
            cell.number_format = number_format
        cell.value = value
        return cell

    def _money(self, column: str, amount: Decimal, currency: str) -> WriteOnlyCell:
        number_format = self._money_formats.get(currency)
        if number_format is None:
            number_format = self._money_formats[currency] = f'#,##0.00 "{currency}"'
        # The double nearest to the exact amount: what a spreadsheet can hold of it.
        return self._styled(column, number_format, float(amount))

    def add(self, order: Order) -> None:
        """Append one order to the Orders sheets and its lines to the Items sheets."""
        row = []
        for position, column in enumerate(self.columns):
            value = column.value(order)
            if column.kind == "text":
                row.append(self.text(value))
            elif column.kind == "money":
                row.append(self._money(f"order {position}", value, order.currency))
            elif column.kind == "datetime":
                # Shown to the second, a fraction would round up (23:59:59.9999 into the next
                # day, or year): the cell holds the second the moment is in.
                row.append(self._styled(f"order {position}", DATETIME_FORMAT, value.replace(microsecond=0)))
            else:
                row.append(value)
        self.orders.append(row)
        order_id = self.text(order.id)
        for item in order.items:
            self.items.append(
                [
                    order_id,
                    self.text(item.sku),
                    self.text(item.name),
                    item.quantity,
                    self._money("unit price", item.unit_price, order.currency),
                    self._money("amount", item.unit_price * item.quantity, order.currency),
                ]
            )

    def save(self, path: Path) -> None:
        """Set each sheet's autofilter over its rows and write the workbook to ``path``."""
        self.orders.set_filters()
        self.items.set_filters()
        self.workbook.save(path)


def _cut(text: str) -> str:
    """``text`` shortened to fit a cell with :data:`CUT_MARKER` at its end, counted in UTF-16 units."""
    room = MAX_CELL_UNITS - utf16_units(CUT_MARKER)
    kept, units = [], 0
    for character in text:
        units += 2 if ord(character) > 0xFFFF else 1
        if units > room:
            break
        kept.append(character)
    return "".join(kept) + CUT_MARKER

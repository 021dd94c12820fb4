"""The workbook of an export: orders streamed into two typed sheets in write-only mode.

openpyxl's write-only mode keeps memory flat whatever the number of orders: an ``Orders`` sheet
(one row per order, the job's chosen columns) and an ``Items`` sheet (one row per order line).
Cells are typed: real Excel dates, numbers with a currency format; text that a spreadsheet
would run as a formula is stored as text.
"""

from __future__ import annotations

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
      columns: The Orders sheet's column names (see :data:`pipeline.export.orders.ORDER_COLUMNS`).
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

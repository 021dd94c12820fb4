"""The order schema: what an order is, how each field is checked, and the columns it exports to.

Every source (inline list, JSON Lines or CSV file, a shop's plug-in) yields plain dicts; they
all pass through :func:`validate_order`, so one place decides what a valid order is and every
error names the row, the field and the value: ``row 17: total 'abc' is not a number``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from pipeline.errors import InvalidOrder, PermanentError, shown

#: The statuses an order may have.
STATUSES = frozenset({"pending", "paid", "shipped", "delivered", "cancelled", "refunded"})
#: A currency: an ISO 4217 code.
CURRENCY = re.compile(r"[A-Z]{3}")
#: A plausible e-mail address (delivery is the mail module's business, not the export's).
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Item(NamedTuple):
    """One line of an order (a named tuple: exports build millions of them)."""

    sku: str
    name: str
    quantity: int
    unit_price: Decimal


class Order(NamedTuple):
    """A validated order. ``created_at`` is naive UTC: Excel has no time zones."""

    id: str
    created_at: datetime.datetime
    customer_name: str
    customer_email: str
    status: str
    currency: str
    total: Decimal
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Column:
    """A column of the Orders sheet: header, width, how to get its value, and its kind."""

    header: str
    width: float
    value: Callable[[Order], Any]
    #: ``text``, ``datetime``, ``money`` or ``count``: decides the cell's type and format.
    kind: str


#: The Orders sheet's columns, by the name a job chooses them with, in their default order.
ORDER_COLUMNS: dict[str, Column] = {
    "id": Column("Order", 14, lambda o: o.id, "text"),
    "created_at": Column("Created (UTC)", 20, lambda o: o.created_at, "datetime"),
    "customer_name": Column("Customer", 28, lambda o: o.customer_name, "text"),
    "customer_email": Column("Email", 32, lambda o: o.customer_email, "text"),
    "status": Column("Status", 12, lambda o: o.status, "text"),
    "currency": Column("Currency", 10, lambda o: o.currency, "text"),
    "total": Column("Total", 14, lambda o: o.total, "money"),
    "item_count": Column("Items", 8, lambda o: len(o.items), "count"),
}

#: The Items sheet's columns: header and width.
ITEM_COLUMNS = (("Order", 14), ("SKU", 16), ("Item", 32), ("Quantity", 10), ("Unit price", 14), ("Amount", 14))


def choose_columns(names: list[str] | None) -> list[str]:
    """The Orders columns a job asked for, checked; all of them when it named none.

    Raises:
      PermanentError: A name is not a column, or a name is repeated.
    """
    if not names:
        return list(ORDER_COLUMNS)
    unknown = [n for n in names if n not in ORDER_COLUMNS]
    if unknown:
        raise PermanentError(f"unknown column(s) {unknown}; choose from {list(ORDER_COLUMNS)}")
    if len(set(names)) != len(names):
        raise PermanentError(f"columns {names} name one column twice")
    return list(names)


def _text(row: int, field: str, value: Any, *, required: bool = True) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is not text")
    try:
        text = str(value).strip()
    except ValueError:  # an integer of more digits than Python writes out
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is too long") from None
    if required and not text:
        raise InvalidOrder(f"row {row}: {field} is empty")
    return text


#: The exponent of the largest number a spreadsheet cell holds: Excel's is 9.99999999999999E+307
#: (past it the cell's double is infinite, which openpyxl writes as an empty value: lost silently).
LARGEST_CELL_EXPONENT = 307
#: The largest count a spreadsheet cell holds exactly: Excel keeps 15 significant digits.
LARGEST_EXACT_COUNT = 10**15 - 1


def _money(row: int, field: str, value: Any) -> Decimal:
    """An amount, exact: from the input's decimal text, never through a binary float.

    A JSON number arrives as a float; its shortest representation is the text it was written
    as, so that text is what is read. Negative amounts (refunds, discounts) are amounts too.
    """
    if isinstance(value, bool):
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is not a number")
    text = repr(value) if isinstance(value, float) else value.strip() if isinstance(value, str) else value
    try:
        number = Decimal(text)
    except (ArithmeticError, TypeError, ValueError):
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is not a number") from None
    if not number.is_finite():
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is not a finite number")
    if number and number.adjusted() > LARGEST_CELL_EXPONENT:
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is larger than a spreadsheet cell holds (9.99e307)")
    return number


def _count(row: int, field: str, value: Any) -> int:
    try:
        number = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise InvalidOrder(f"row {row}: {field} {shown(value)} is not a whole number of at least 1")
    if number > LARGEST_EXACT_COUNT:
        raise InvalidOrder(
            f"row {row}: {field} {shown(value)} is more than a spreadsheet cell holds exactly ({LARGEST_EXACT_COUNT:,})"
        )
    return number


#: The earliest and latest date and time an Excel cell holds (its 1900 date system), in UTC.
EARLIEST_CELL_TIME = datetime.datetime(1900, 1, 1)
LATEST_CELL_TIME = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)


def _timestamp(row: int, field: str, value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        try:
            moment = datetime.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidOrder(f"row {row}: {field} {shown(value)} is not an ISO 8601 date and time") from None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
        except OverflowError:
            raise InvalidOrder(f"row {row}: {field} {shown(value)} falls outside the years 1 to 9999 in UTC") from None
    if not EARLIEST_CELL_TIME <= moment <= LATEST_CELL_TIME:
        raise InvalidOrder(
            f"row {row}: {field} {shown(value)} is outside the dates an Excel cell holds "
            f"({EARLIEST_CELL_TIME:%Y-%m-%d} to {LATEST_CELL_TIME:%Y-%m-%d}, UTC)"
        )
    return moment


def validate_order(raw: Mapping[str, Any], row: int) -> Order:
    """Check one order dict and turn it into an :class:`Order`.

    Parameters:
      raw: ``id``, ``created_at`` (ISO 8601), ``customer_name``, ``customer_email``,
        ``status``, ``currency``, ``total`` and ``items`` (each ``sku``, ``name``,
        ``quantity``, ``unit_price``).
      row: Where it came from (line or position), named in errors.

    Raises:
      InvalidOrder: A field is missing or wrong; the message names row, field and value.
    """
    if not isinstance(raw, Mapping):
        raise InvalidOrder(f"row {row}: {shown(raw)} is not an object with order fields")
    missing = [f for f in Order._fields if f not in raw]
    if missing:
        raise InvalidOrder(f"row {row}: missing field(s) {', '.join(missing)}")
    email = _text(row, "customer_email", raw["customer_email"])
    if not EMAIL.fullmatch(email):
        raise InvalidOrder(f"row {row}: customer_email {shown(email)} is not an e-mail address")
    status = _text(row, "status", raw["status"]).lower()
    if status not in STATUSES:
        raise InvalidOrder(f"row {row}: status {shown(status)} is not one of {', '.join(sorted(STATUSES))}")
    currency = _text(row, "currency", raw["currency"]).upper()
    if not CURRENCY.fullmatch(currency):
        raise InvalidOrder(f"row {row}: currency {shown(currency)} is not a three-letter ISO code")
    items = raw["items"]
    if not isinstance(items, list | tuple):
        raise InvalidOrder(f"row {row}: items {shown(items)} is not a list")
    return Order(
        id=_text(row, "id", raw["id"]),
        created_at=_timestamp(row, "created_at", raw["created_at"]),
        customer_name=_text(row, "customer_name", raw["customer_name"], required=False),
        customer_email=email,
        status=status,
        currency=currency,
        total=_money(row, "total", raw["total"]),
        items=tuple(_validate_item(item, row, n) for n, item in enumerate(items, 1)),
    )


def _validate_item(raw: Any, row: int, position: int) -> Item:
    where = f"item {position}"
    if not isinstance(raw, Mapping):
        raise InvalidOrder(f"row {row}: {where} {shown(raw)} is not an object")
    missing = [f for f in Item._fields if f not in raw]
    if missing:
        raise InvalidOrder(f"row {row}: {where} misses field(s) {', '.join(missing)}")
    item = Item(
        sku=_text(row, f"{where} sku", raw["sku"]),
        name=_text(row, f"{where} name", raw["name"]),
        quantity=_count(row, f"{where} quantity", raw["quantity"]),
        unit_price=_money(row, f"{where} unit_price", raw["unit_price"]),
    )
    amount = item.unit_price * item.quantity
    if amount and amount.adjusted() > LARGEST_CELL_EXPONENT:
        raise InvalidOrder(
            f"row {row}: {where} amount ({item.quantity} at {item.unit_price}) is larger than a spreadsheet cell "
            "holds (9.99e307)"
        )
    return item

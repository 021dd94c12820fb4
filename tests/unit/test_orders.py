"""The order schema: every field checked, every error naming row, field and value."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from sample_source import make_order

from pipeline.errors import InvalidOrder, PermanentError
from pipeline.export.orders import choose_columns, validate_order


def test_a_valid_order_is_typed():
    order = validate_order(make_order(7), 1)
    assert order.id == "A-000007" and order.currency == "EUR" and order.status == "paid"
    assert order.created_at == datetime.datetime(2026, 3, 8, 7, 15)
    assert order.total == 17.0 and len(order.items) == 3
    assert order.items[1].quantity == 2 and order.items[1].unit_price == 2.5


def test_a_time_with_an_offset_is_converted_to_utc():
    raw = {**make_order(1), "created_at": "2026-03-01T10:00:00+02:00"}
    assert validate_order(raw, 1).created_at == datetime.datetime(2026, 3, 1, 8, 0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("total", "abc", "row 17: total 'abc' is not a number"),
        ("total", True, "row 17: total True is not a number"),
        ("total", "nan", "row 17: total 'nan' is not a finite number"),
        ("total", float("inf"), "row 17: total inf is not a finite number"),
        ("total", "-Infinity", "row 17: total '-Infinity' is not a finite number"),
        ("total", [1], "row 17: total [1] is not a number"),
        # Past Excel's largest number the cell's double is infinite, written as an empty value.
        ("total", "1e999", "row 17: total '1e999' is larger than a spreadsheet cell holds"),
        ("total", "-1E+308", "row 17: total '-1E+308' is larger than a spreadsheet cell holds"),
        ("created_at", "yesterday", "row 17: created_at 'yesterday' is not an ISO 8601 date and time"),
        ("customer_email", "nobody", "row 17: customer_email 'nobody' is not an e-mail address"),
        ("status", "lost", "row 17: status 'lost' is not one of"),
        ("currency", "euro", "row 17: currency 'EURO' is not a three-letter ISO code"),
        ("id", "  ", "row 17: id is empty"),
        ("items", "none", "row 17: items 'none' is not a list"),
        # A plug-in's integers: past the digits Python writes out, its repr raises ValueError.
        pytest.param("id", 10**5000, "row 17: id <an integer of about 5,001 digits> is too long", id="huge id"),
        pytest.param(
            "created_at", 10**5000, "row 17: created_at <an integer of about 5,001 digits> is not", id="huge time"
        ),
        pytest.param("total", 10**5000, "row 17: total <an integer of about 5,001 digits> is larger", id="huge total"),
    ],
)
def test_a_bad_field_names_row_field_and_value(field, value, message):
    with pytest.raises(InvalidOrder) as raised:
        validate_order({**make_order(1), field: value}, 17)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0001-01-01T00:00:00+01:00", "falls outside the years 1 to 9999 in UTC"),
        ("9999-12-31T23:00:00-02:00", "falls outside the years 1 to 9999 in UTC"),
        ("1899-12-31T23:59:59", "is outside the dates an Excel cell holds (1900-01-01 to 9999-12-31, UTC)"),
        ("0001-01-01T00:00:00", "is outside the dates an Excel cell holds"),
        (datetime.datetime(1850, 5, 1), "is outside the dates an Excel cell holds"),
    ],
)
def test_a_date_at_the_edges_of_time_names_its_row_and_field(value, message):
    with pytest.raises(InvalidOrder) as raised:
        validate_order({**make_order(1), "created_at": value}, 17)
    assert str(raised.value).startswith(f"row 17: created_at {value!r} ") and message in str(raised.value)


def test_the_first_and_last_moments_excel_holds_are_taken():
    first = validate_order({**make_order(1), "created_at": "1900-01-01T00:00:00Z"}, 1)
    last = validate_order({**make_order(1), "created_at": "9999-12-31T23:59:59+00:00"}, 1)
    assert first.created_at == datetime.datetime(1900, 1, 1)
    assert last.created_at == datetime.datetime(9999, 12, 31, 23, 59, 59)


def test_a_bad_item_names_its_position():
    raw = make_order(1)
    raw["items"][1]["quantity"] = 0
    with pytest.raises(InvalidOrder, match=r"row 4: item 2 quantity 0 is not a whole number of at least 1"):
        validate_order(raw, 4)


def test_an_item_past_what_a_cell_holds_names_its_position():
    raw = make_order(1)
    raw["items"][0]["quantity"] = 10**15
    with pytest.raises(InvalidOrder, match=r"row 4: item 1 quantity 1000000000000000 is more than a spreadsheet"):
        validate_order(raw, 4)
    raw["items"][0].update(quantity=10**14, unit_price="1e300")
    with pytest.raises(InvalidOrder, match=r"row 4: item 1 amount \(100000000000000 at 1E\+300\) is larger"):
        validate_order(raw, 4)


def test_the_largest_amounts_and_counts_a_cell_holds_are_taken():
    raw = {**make_order(1), "total": "9.99999999999999E+307"}
    raw["items"][0].update(quantity=10**15 - 1, unit_price="0.01")
    order = validate_order(raw, 1)
    assert order.total == Decimal("9.99999999999999E+307") and order.items[0].quantity == 10**15 - 1


def test_missing_fields_are_listed():
    raw = make_order(1)
    del raw["total"], raw["status"]
    with pytest.raises(InvalidOrder, match="row 2: missing field"):
        validate_order(raw, 2)


def test_a_row_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidOrder, match="row 5: 'x' is not an object"):
        validate_order("x", 5)


def test_columns_default_to_all_and_unknown_ones_are_named():
    assert choose_columns(None)[0] == "id" and "total" in choose_columns([])
    assert choose_columns(["total", "id"]) == ["total", "id"]
    with pytest.raises(PermanentError, match=r"unknown column\(s\) \['price'\]"):
        choose_columns(["id", "price"])
    with pytest.raises(PermanentError, match="twice"):
        choose_columns(["id", "id"])


@pytest.mark.parametrize(("total", "exact"), [(-5, "-5"), ("-12.30", "-12.30"), (0.07, "0.07"), ("4.35", "4.35")])
def test_amounts_are_exact_decimals_and_may_be_negative(total, exact):
    order = validate_order({**make_order(1), "total": total}, 1)
    assert order.total == Decimal(exact)


def test_an_item_amount_is_computed_exactly():
    raw = make_order(1)
    raw["items"][0].update(quantity=100, unit_price=0.07)
    item = validate_order(raw, 1).items[0]
    assert item.unit_price * item.quantity == Decimal("7.00")


@pytest.mark.parametrize(
    ("field", "value"), [("customer_email", "x" * 100_000), ("items", {str(n): n for n in range(10**4)})]
)
def test_a_long_bad_value_is_shown_shortened(field, value):
    with pytest.raises(InvalidOrder) as raised:
        validate_order({**make_order(1), field: value}, 17)
    assert str(raised.value).startswith(f"row 17: {field} ") and len(str(raised.value)) < 200

"""Order sources: inline, JSON Lines, CSV and plug-in; the import folder cannot be left."""

from __future__ import annotations

import csv
import json

import pytest
from sample_source import make_order

from pipeline.errors import SourceError
from pipeline.export.sources import INLINE_LIMIT, MAX_LINE_BYTES, check_request, load_plugin, open_source


def source(tmp_path, **request):
    arguments = {"orders": None, "file": None, "filter": None, "import_dir": tmp_path, "plugin": None}
    return open_source(**{**arguments, **request})


def test_inline_orders_are_numbered_from_one(tmp_path):
    opened = source(tmp_path, orders=[make_order(1), make_order(2)])
    assert opened.total == 2 and [row for row, _ in opened.rows()] == [1, 2]


def test_too_many_inline_orders_are_refused_pointing_elsewhere():
    with pytest.raises(SourceError, match=f"at most {INLINE_LIMIT}.*file=.*filter="):
        check_request(orders=[{}] * (INLINE_LIMIT + 1))


def test_orders_and_file_together_are_refused():
    with pytest.raises(SourceError, match="not both"):
        check_request(orders=[], file="x.jsonl")


def test_json_lines_are_read_with_line_numbers_and_counted(tmp_path):
    lines = [json.dumps(make_order(n)) for n in range(3)]
    (tmp_path / "q3.jsonl").write_text(lines[0] + "\n\n" + lines[1] + "\n" + lines[2] + "\n")
    opened = source(tmp_path, file="q3.jsonl")
    rows = list(opened.rows())
    assert [row for row, _ in rows] == [1, 3, 4] and rows[2][1]["id"] == "A-000002"
    assert opened.description["kind"] == "file"


def test_a_bad_json_line_names_its_row(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps(make_order(1)) + "\n{oops\n")
    with pytest.raises(SourceError, match="row 2: not valid JSON"):
        list(source(tmp_path, file="bad.jsonl").rows())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "A", "total": ' + "9" * 5000 + "}", "row 2: a number of more than 4,300 digits"),
        ("[" * 100_000 + "]" * 100_000, "row 2: JSON nested too deep to read"),
    ],
)
def test_a_json_line_python_cannot_read_names_its_row(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps(make_order(1)) + "\n" + line + "\n")
    with pytest.raises(SourceError) as raised:
        list(source(tmp_path, file="bad.jsonl").rows())
    assert str(raised.value) == message


@pytest.mark.parametrize("name", ["huge.jsonl", "huge.csv"])
def test_a_line_past_the_limit_is_refused_naming_it_without_reading_it_whole(tmp_path, name):
    # A file with no line break was read whole into the worker's memory, which a file of some
    # gigabytes ends by killing the worker, delivery after delivery.
    header = "id,sku,item_name,quantity,unit_price\n" if name.endswith(".csv") else ""
    with (tmp_path / name).open("w") as file:
        file.write(header + "x" * (MAX_LINE_BYTES + 1))
    with pytest.raises(SourceError, match=r"line \d is longer than 16 MiB: one order per line"):
        list(source(tmp_path, file=name).rows())


def test_csv_lines_of_one_order_become_its_items(tmp_path):
    path = tmp_path / "orders.csv"
    header = ["id", "created_at", "customer_name", "customer_email", "status", "currency", "total"]
    header += ["sku", "item_name", "quantity", "unit_price"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(
            ["A-1", "2026-03-01T10:00:00Z", "Zoë", "z@example.com", "paid", "EUR", "5", "S1", "Mug", "1", "2"]
        )
        writer.writerow(
            ["A-1", "2026-03-01T10:00:00Z", "Zoë", "z@example.com", "paid", "EUR", "5", "S2", "Tee", "1", "3"]
        )
        writer.writerow(
            ["A-2", "2026-03-02T10:00:00Z", "Sam", "s@example.com", "paid", "EUR", "1", "S3", "Pen", "1", "1"]
        )
    rows = list(source(tmp_path, file="orders.csv").rows())
    assert [(row, order["id"], len(order["items"])) for row, order in rows] == [(2, "A-1", 2), (4, "A-2", 1)]
    assert rows[0][1]["items"][1] == {"sku": "S2", "name": "Tee", "quantity": "1", "unit_price": "3"}


@pytest.mark.parametrize("name", ["../secrets.jsonl", "/etc/passwd", "sub/../../x.jsonl"])
def test_a_path_out_of_the_import_folder_is_refused(tmp_path, name):
    imports = tmp_path / "imports"
    imports.mkdir()
    (tmp_path / "secrets.jsonl").write_text("{}\n")
    with pytest.raises(SourceError, match="outside the import folder"):
        source(imports, file=name)


def test_an_unknown_file_format_is_refused(tmp_path):
    (tmp_path / "orders.xml").write_text("<orders/>")
    with pytest.raises(SourceError, match="unknown format"):
        source(tmp_path, file="orders.xml")


def test_the_plugin_gets_the_filter_and_its_size_is_used(tmp_path):
    opened = source(tmp_path, filter={"count": 4}, plugin="sample_source:iter_orders")
    assert opened.total == 4 and len(list(opened.rows())) == 4
    assert opened.description == {"kind": "plugin", "source": "sample_source:iter_orders", "filter": {"count": 4}}


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        ("no_such_module_here:iter_orders", "importing 'no_such_module_here' failed"),
        ("sample_source:nothing", "has no callable 'nothing'"),
        ("sample_source.iter_orders", "not of the form package.module:function"),
    ],
)
def test_a_broken_plugin_names_the_dotted_path(dotted, message):
    with pytest.raises(SourceError, match=message) as raised:
        load_plugin(dotted)
    assert repr(dotted) in str(raised.value) or dotted in str(raised.value)


def test_no_source_at_all_is_refused(tmp_path):
    with pytest.raises(SourceError, match="no PIPELINE_ORDER_SOURCE"):
        source(tmp_path)

"""The export file: typed cells, formats, layout, formula safety, naming, atomic storage."""

from __future__ import annotations

import datetime
import fcntl
import os
from pathlib import Path

import openpyxl
import pytest
from sample_source import make_order

from pipeline.errors import InvalidOrder, JobStopped
from pipeline.export.exporter import Exporter, export_file_name, safe_name
from pipeline.export.workbook import FORMULA_TRIGGERS, WorkbookWriter
from pipeline.settings import Settings


@pytest.fixture
def exporter(tmp_path) -> Exporter:
    # No store, so no reuse: these tests need no Redis.
    settings = Settings(export_dir=tmp_path / "exports", import_dir=tmp_path)
    return Exporter(settings, reuse=None)


def test_cells_are_typed_and_formatted(exporter):
    pointer = exporter.export("job-1", orders=[make_order(1), make_order(2, items=1)])
    book = openpyxl.load_workbook(pointer["path"])
    orders, items = book["Orders"], book["Items"]
    header = [cell.value for cell in orders[1]]
    assert header == ["Order", "Created (UTC)", "Customer", "Email", "Status", "Currency", "Total", "Items"]
    assert all(cell.font.b for cell in orders[1]) and orders.freeze_panes == "A2"
    assert orders.auto_filter.ref == "A1:H3" and items.auto_filter.ref == "A1:F5"
    assert orders.column_dimensions["D"].width == 32
    first = [cell for cell in orders[2]]
    assert first[0].value == "A-000001" and first[0].data_type == "s"
    assert first[1].value == datetime.datetime(2026, 3, 2, 1, 15) and first[1].is_date
    assert first[1].number_format == "yyyy-mm-dd hh:mm:ss"
    assert first[6].value == 17 and first[6].data_type == "n" and first[6].number_format == '#,##0.00 "EUR"'
    assert first[7].value == 3 and first[7].data_type == "n"
    line = [cell.value for cell in items[4]]
    assert line == ["A-000001", "SKU-1-2", "Item 2 of order 1", 3, 3.5, 10.5]
    assert items[4][5].number_format == '#,##0.00 "EUR"'
    assert pointer["rows"] == {"Orders": 2, "Items": 4}


def test_every_row_keeps_its_own_values_and_currency_formats(exporter):
    currencies = ["EUR", "USD", "EUR", "JPY", "USD"]
    orders = [{**make_order(n, items=2), "currency": currency} for n, currency in enumerate(currencies)]
    pointer = exporter.export("job-1", orders=orders)
    book = openpyxl.load_workbook(pointer["path"])
    rows = list(book["Orders"].iter_rows(min_row=2))
    lines = list(book["Items"].iter_rows(min_row=2))
    for n, currency in enumerate(currencies):
        money = f'#,##0.00 "{currency}"'
        assert rows[n][0].value == f"A-{n:06d}"
        assert rows[n][1].value == datetime.datetime(2026, 3, 1 + n, n, 15) and rows[n][1].is_date
        assert rows[n][6].value == 6.5 and rows[n][6].number_format == money
        for i, line in enumerate(lines[2 * n : 2 * n + 2]):
            assert [cell.value for cell in line] == [
                f"A-{n:06d}",
                f"SKU-{n}-{i}",
                f"Item {i} of order {n}",
                i + 1,
                i + 1.5,
                (i + 1) * (i + 1.5),
            ]
            assert line[4].number_format == money and line[5].number_format == money
            assert line[3].number_format == "General"


def test_chosen_columns_only(exporter):
    pointer = exporter.export("job-1", orders=[make_order(1)], columns=["total", "id"])
    orders = openpyxl.load_workbook(pointer["path"])["Orders"]
    assert [cell.value for cell in orders[1]] == ["Total", "Order"] and orders[2][1].value == "A-000001"


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@"])
def test_text_a_spreadsheet_would_run_is_written_as_text(exporter, trigger):
    order = make_order(1, name=f'{trigger}HYPERLINK("http://evil","x")')
    order["items"][0]["name"] = f"{trigger}1+1"
    pointer = exporter.export("job-1", orders=[order])
    book = openpyxl.load_workbook(pointer["path"])
    customer = book["Orders"]["C2"]
    assert customer.data_type == "s" and customer.value.startswith(trigger) and customer.quotePrefix
    assert book["Items"]["C2"].data_type == "s" and book["Items"]["C2"].value == f"{trigger}1+1"


@pytest.mark.parametrize("trigger", FORMULA_TRIGGERS)
def test_every_formula_trigger_makes_a_text_cell(trigger):
    writer = WorkbookWriter(["id"])
    cell = writer.text(f"{trigger}SUM(A1:A9)")
    assert cell.data_type == "s" and cell.quotePrefix and cell.value == f"{trigger}SUM(A1:A9)"
    assert writer.text("plain") == "plain"


def test_leading_tabs_and_line_breaks_are_trimmed_by_validation(exporter):
    pointer = exporter.export("job-1", orders=[make_order(1, name="\t=cmd")])
    customer = openpyxl.load_workbook(pointer["path"])["Orders"]["C2"]
    assert customer.value == "=cmd" and customer.data_type == "s"


def test_the_pointer_describes_the_file(exporter, tmp_path):
    import hashlib

    pointer = exporter.export("3f2a-job", orders=[make_order(1)], name="Q3 orders / EU")
    path = tmp_path / "exports" / "Q3-orders-EU-3f2a-job.xlsx"
    assert pointer["path"] == str(path) and pointer["file_name"] == path.name
    assert pointer["url"] == path.as_uri() and pointer["size"] == path.stat().st_size
    assert pointer["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pointer["reused"] is False and pointer["created_at"].endswith("+00:00")


def test_the_url_joins_the_base_url(tmp_path):
    settings = Settings(
        export_dir=tmp_path, export_base_url="https://files.shop.example/exports/", export_reuse_window=0
    )
    pointer = Exporter(settings, reuse=None).export("j", orders=[make_order(1)], name="a b")
    assert pointer["url"] == "https://files.shop.example/exports/a-b-j.xlsx"


def test_a_bad_row_leaves_no_file(exporter, tmp_path):
    orders = [make_order(1), make_order(2), {**make_order(3), "total": "abc"}]
    with pytest.raises(InvalidOrder, match="row 3: total 'abc' is not a number"):
        exporter.export("job-1", orders=orders)
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_revoked_export_stops_and_leaves_no_file(tmp_path):
    settings = Settings(export_dir=tmp_path, export_reuse_window=0, order_source="sample_source:iter_orders")
    asked = []

    def revoked() -> bool:
        asked.append(True)
        return len(asked) >= 2

    with pytest.raises(JobStopped, match="stopped after 1000 orders"):
        Exporter(settings, reuse=None).export("job-1", filter={"count": 5000}, revoked=revoked)
    assert list(tmp_path.iterdir()) == []


def test_progress_is_reported_with_total_and_phase(tmp_path):
    settings = Settings(export_dir=tmp_path, export_reuse_window=0, order_source="sample_source:iter_orders")
    reports = []
    Exporter(settings, reuse=None).export("job-1", filter={"count": 30}, progress=lambda *r: reports.append(r))
    assert reports[0] == (0, 30, "writing") and reports[-1] == (30, 30, "saving")


def run_left_behind(folder, job_id: str, token: str) -> Path:
    """The scratch folder and half file a run of ``job_id`` left (its lock file, not held)."""
    scratch = folder / ".scratch" / f"{job_id}-{token}"
    scratch.mkdir(parents=True)
    (scratch / ".lock").touch()
    (scratch / "openpyxl.sheet").write_bytes(b"rows")
    (folder / f".orders-{job_id}.xlsx.{token}.part").write_bytes(b"half a file")
    return scratch


def test_leftovers_of_a_dead_run_are_removed_and_other_jobs_keep_theirs(exporter, tmp_path):
    folder = tmp_path / "exports"
    run_left_behind(folder, "job-1", "0123abcd")
    other = run_left_behind(folder, "job-2", "0123abcd")
    exporter.export("job-1", orders=[make_order(1)])
    assert sorted(p.name for p in folder.iterdir()) == [
        ".orders-job-2.xlsx.0123abcd.part",
        ".scratch",
        "orders-job-1.xlsx",
    ]
    assert [p.name for p in (folder / ".scratch").iterdir()] == [other.name]


def test_a_run_still_going_on_elsewhere_keeps_its_files(exporter, tmp_path):
    folder = tmp_path / "exports"
    alive = run_left_behind(folder, "job-1", "feedface")
    held = os.open(alive / ".lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        exporter.export("job-1", orders=[make_order(1)])
    finally:
        os.close(held)
    assert (folder / ".orders-job-1.xlsx.feedface.part").exists() and (alive / "openpyxl.sheet").exists()
    assert (folder / "orders-job-1.xlsx").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Q3 orders", "Q3-orders"),
        ("../../etc/passwd", "etc-passwd"),
        ("", "orders"),
        ("ünïcode", "n-code"),
        ("a" * 99, "a" * 60),
    ],
)
def test_file_names_are_sanitised(name, expected):
    assert safe_name(name) == expected
    assert export_file_name(name, "m-1") == f"{expected}-m-1.xlsx"

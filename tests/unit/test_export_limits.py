"""Exports that lose nothing: exact money, Excel's limits, inputs of every encoding, no scratch
files left, revocation to the last step, reuse that never points elsewhere."""

from __future__ import annotations

import datetime
import glob
import json
import os
import tempfile
import time

import openpyxl
import pytest
from sample_source import make_order

from pipeline.errors import JobStopped, SourceError
from pipeline.export import workbook
from pipeline.export.exporter import Exporter
from pipeline.export.scratch import scratch_root
from pipeline.settings import Settings


class Memory:
    """The reuse memory, as the store keeps it, in a dict."""

    def __init__(self) -> None:
        self.pointers: dict[str, dict] = {}

    def recall(self, digest):
        return self.pointers.get(digest)

    def remember(self, digest, pointer):
        self.pointers[digest] = json.loads(json.dumps(pointer))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(export_dir=tmp_path / "exports", import_dir=tmp_path / "imports", export_reuse_window=0)


@pytest.fixture
def exporter(settings) -> Exporter:
    settings.import_dir.mkdir()
    return Exporter(settings, reuse=None)


def item_amounts(path) -> list[float]:
    sheet = openpyxl.load_workbook(path)["Items"]
    return [row[5] for row in sheet.iter_rows(min_row=2, values_only=True)]


@pytest.mark.parametrize(("quantity", "price", "amount"), [(100, 0.07, 7.0), (100, "4.35", 435.0), (3, "0.1", 0.3)])
def test_an_item_amount_is_the_double_nearest_the_exact_product(exporter, quantity, price, amount):
    order = make_order(1, items=1)
    order["items"][0].update(quantity=quantity, unit_price=price)
    assert item_amounts(exporter.export("j", orders=[order])["path"]) == [amount]


def test_negative_totals_are_exported(exporter):
    pointer = exporter.export("j", orders=[{**make_order(1), "total": "-12.30"}])
    assert openpyxl.load_workbook(pointer["path"])["Orders"]["G2"].value == -12.3


def test_rows_past_a_sheet_go_on_in_further_sheets_with_the_header(exporter, monkeypatch):
    monkeypatch.setattr(workbook, "MAX_SHEET_ROWS", 5)
    pointer = exporter.export("j", orders=[make_order(n, items=3) for n in range(4)])
    book = openpyxl.load_workbook(pointer["path"])
    assert pointer["sheets"]["Items"] == ["Items", "Items 2", "Items 3"] and pointer["rows"]["Items"] == 12
    assert book.sheetnames == ["Orders", "Items", "Items 2", "Items 3"]
    rows = [list(book[title].iter_rows(values_only=True)) for title in pointer["sheets"]["Items"]]
    assert all(sheet[0][0] == "Order" for sheet in rows) and [len(sheet) for sheet in rows] == [5, 5, 5]
    assert sum(len(sheet) - 1 for sheet in rows) == 12


@pytest.mark.parametrize("text", ["x" * 40_000, "😀" * 20_000, "ab" * 16_383 + "😀"])
def test_a_text_longer_than_a_cell_is_cut_with_a_marker_and_counted(exporter, text):
    pointer = exporter.export("j", orders=[make_order(1, name=text)])
    value = openpyxl.load_workbook(pointer["path"])["Orders"]["C2"].value
    assert value.endswith(workbook.CUT_MARKER) and workbook.utf16_units(value) <= workbook.MAX_CELL_UNITS
    assert text.startswith(value.removesuffix(workbook.CUT_MARKER)) and pointer["cut_cells"] == 1


def test_a_text_that_fits_exactly_is_not_cut(exporter):
    text = "y" * workbook.MAX_CELL_UNITS
    pointer = exporter.export("j", orders=[make_order(1, name=text)])
    assert openpyxl.load_workbook(pointer["path"])["Orders"]["C2"].value == text and pointer["cut_cells"] == 0


@pytest.mark.parametrize(
    ("name", "item_field", "item_value", "item_cell", "name_shown", "item_shown"),
    [
        ("Zoë\x00\x01Ørsted\x0bB.", "name", "Mu\x1fg", "C2", "Zoë\ufffd\ufffdØrsted\ufffdB.", "Mu\ufffdg"),
        # Lone surrogates and non-characters: the XML writer refused both, failing the export.
        ("M\udcfcller\uffff", "sku", "S\ud800-\ufffe", "B2", "M\ufffdller\ufffd", "S\ufffd-\ufffd"),
    ],
)
def test_characters_xml_cannot_hold_are_replaced_and_counted(
    exporter, name, item_field, item_value, item_cell, name_shown, item_shown
):
    order = make_order(1, name=name)
    order["items"][0][item_field] = item_value
    pointer = exporter.export("j", orders=[order])
    book = openpyxl.load_workbook(pointer["path"])
    assert book["Orders"]["C2"].value == name_shown and book["Items"][item_cell].value == item_shown
    assert pointer["replaced_characters"] == 4


def test_a_time_never_shows_as_the_next_second(exporter):
    pointer = exporter.export("j", orders=[{**make_order(1), "created_at": "2025-12-31T23:59:59.9999"}])
    assert openpyxl.load_workbook(pointer["path"])["Orders"]["B2"].value == datetime.datetime(2025, 12, 31, 23, 59, 59)


CSV_HEADER = "id,created_at,customer_name,customer_email,status,currency,total,sku,item_name,quantity,unit_price\n"


def test_a_csv_with_a_byte_order_mark_is_read(exporter, settings):
    line = "B-1,2026-01-05T08:00:00Z,Zoë,zoe@example.com,paid,EUR,30,S1,Kop,2,15\n"
    (settings.import_dir / "excel.csv").write_bytes("\ufeff".encode() + (CSV_HEADER + line).encode())
    assert exporter.export("j", file="excel.csv")["rows"] == {"Orders": 1, "Items": 1}


def test_a_csv_field_past_the_csv_module_default_is_read(exporter, settings):
    long_name = "n" * 200_000
    line = f"B-1,2026-01-05T08:00:00Z,{long_name},zoe@example.com,paid,EUR,30,S1,Kop,2,15\n"
    (settings.import_dir / "long.csv").write_text(CSV_HEADER + line)
    assert exporter.export("j", file="long.csv")["cut_cells"] == 1


@pytest.mark.parametrize("name", ["orders.csv", "orders.jsonl"])
def test_a_file_that_is_not_utf8_fails_naming_the_line(exporter, settings, name):
    good = CSV_HEADER if name.endswith(".csv") else json.dumps(make_order(1)) + "\n"
    (settings.import_dir / name).write_bytes(good.encode() + b"\xff\xfe\x00binary\n")
    with pytest.raises(SourceError, match=f"{name}: line 2 is not UTF-8 text"):
        exporter.export("j", file=name)


def openpyxl_files_in_the_system_temp() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "openpyxl.*")))


def test_a_failed_export_leaves_no_scratch_files_anywhere(exporter, settings, tmp_path, monkeypatch):
    # The system temp of this process alone: the suite's other processes write openpyxl's
    # files into the machine's own meanwhile.
    (tmp_path / "system-temp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-temp"))
    before = openpyxl_files_in_the_system_temp()
    orders = [make_order(1), {**make_order(2), "total": "abc"}]
    with pytest.raises(Exception, match="row 2"):
        exporter.export("j", orders=orders)
    assert openpyxl_files_in_the_system_temp() == before
    assert not scratch_root(settings.export_dir).exists()
    assert list(settings.export_dir.iterdir()) == []


def test_what_a_dead_job_left_is_swept_when_a_worker_starts(settings):
    stale = scratch_root(settings.export_dir) / "dead-job"
    stale.mkdir(parents=True)
    (stale / "openpyxl.xyz.xml").write_text("<half a sheet>")
    old = time.time() - settings.export_time_limit - 3600
    os.utime(stale, (old, old))
    fresh = scratch_root(settings.export_dir) / "running-job"
    fresh.mkdir()
    Exporter(settings, reuse=None)
    assert not stale.exists() and fresh.exists()


def test_a_job_revoked_while_saving_leaves_no_file_and_no_reuse_entry(tmp_path):
    settings = Settings(export_dir=tmp_path / "exports", import_dir=tmp_path)
    memory = Memory()
    saving = []

    def progress(done, total, phase):
        if phase == "saving":
            saving.append(True)  # the revoke arrives now, while the file is being saved

    with pytest.raises(JobStopped, match="saved"):
        Exporter(settings, memory).export("j", orders=[make_order(1)], progress=progress, revoked=lambda: bool(saving))
    assert list(settings.export_dir.iterdir()) == [] and memory.pointers == {}


def test_reuse_never_hands_out_a_file_of_another_export_folder(tmp_path):
    memory = Memory()
    first = Exporter(Settings(export_dir=tmp_path / "a", import_dir=tmp_path), memory)
    second = Exporter(Settings(export_dir=tmp_path / "b", import_dir=tmp_path), memory)
    orders = [make_order(1)]
    pointer = first.export("j1", orders=orders)
    assert first.export("j2", orders=orders)["reused"] is True
    other = second.export("j3", orders=orders)
    assert other["reused"] is False and other["path"].startswith(str((tmp_path / "b").resolve()))
    assert pointer["path"].startswith(str((tmp_path / "a").resolve()))

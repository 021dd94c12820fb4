"""export_orders through a real worker, RabbitMQ and Redis; files opened with openpyxl."""

from __future__ import annotations

import json
import shutil

import openpyxl
import pytest
from export_support import export_env, finished_files, make_folders, order_ids
from sample_source import make_order
from services import WorkerProcess, flush_queue, queue_depth
from waiting import wait_until

from pipeline.actors import export_orders
from pipeline.errors import InvalidMessage, JobRevoked, PermanentError
from pipeline.export.sources import INLINE_LIMIT
from pipeline.queues import SLOW_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def module_folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def module_worker(amqp, redis_client, module_folders):
    """One worker on the slow queue for the module, started on an empty queue."""
    flush_queue(SLOW_QUEUE)
    worker = WorkerProcess([SLOW_QUEUE], 2, export_env(*module_folders), ["pipeline.actors", "sample_actors"])
    yield worker
    worker.discard()


@pytest.fixture
def folders(module_folders, clean_redis):
    """The shared worker's export and import folders, emptied (and no export remembered) for this test."""
    for folder in module_folders:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
    return module_folders


@pytest.fixture
def export_worker(module_worker, folders):
    return module_worker


def test_inline_export(export_worker, folders):
    result = AsyncResult(export_orders.send(orders=[make_order(1), make_order(2)], name="inline").message_id)
    pointer = result.get(timeout=30)
    assert order_ids(pointer["path"]) == ["A-000001", "A-000002"]
    assert pointer["rows"] == {"Orders": 2, "Items": 6} and pointer["file_name"].startswith("inline-")
    assert finished_files(folders[0]) == [pointer["file_name"]]


def test_json_lines_export_has_every_cell_typed(export_worker, folders):
    (folders[1] / "q1.jsonl").write_text("".join(json.dumps(make_order(n)) + "\n" for n in range(50)))
    pointer = AsyncResult(export_orders.send(file="q1.jsonl").message_id).get(timeout=30)
    book = openpyxl.load_workbook(pointer["path"])
    rows = list(book["Orders"].iter_rows(min_row=2))
    assert len(rows) == 50 and pointer["rows"] == {"Orders": 50, "Items": 150}
    expected = make_order(49)
    last = rows[-1]
    assert [c.value for c in last[:6]] == [
        "A-000049",
        last[1].value,
        "Customer 49",
        "customer49@example.com",
        "paid",
        "EUR",
    ]
    assert last[1].is_date and last[1].value.isoformat() == expected["created_at"][:19]
    assert last[6].data_type == "n" and last[6].value == float(expected["total"])
    items = list(book["Items"].iter_rows(min_row=2, values_only=True))
    assert items[-1] == ("A-000049", "SKU-49-2", "Item 2 of order 49", 3, 3.5, 10.5)


def test_csv_export(export_worker, folders):
    lines = ["id,created_at,customer_name,customer_email,status,currency,total,sku,item_name,quantity,unit_price"]
    lines += ["B-1,2026-01-05T08:00:00Z,Zoë Ørsted,zoe@example.com,shipped,DKK,30,S1,Kop,2,15"]
    (folders[1] / "orders.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pointer = AsyncResult(
        export_orders.send(file="orders.csv", columns=["id", "customer_name", "total"]).message_id
    ).get(timeout=30)
    sheet = openpyxl.load_workbook(pointer["path"])["Orders"]
    assert [c.value for c in sheet[2]] == ["B-1", "Zoë Ørsted", 30]
    assert sheet["C2"].number_format == '#,##0.00 "DKK"'


def test_plugin_export_with_progress(export_worker, folders):
    result = AsyncResult(export_orders.send(filter={"count": 3000}).message_id)
    pointer = result.get(timeout=60)
    assert pointer["rows"]["Orders"] == 3000 and len(order_ids(pointer["path"])) == 3000
    assert result.progress["done"] == 3000 and result.progress["total"] == 3000


def test_an_identical_request_reuses_the_file(export_worker, folders):
    first = AsyncResult(export_orders.send(filter={"count": 20}, name="a").message_id).get(timeout=30)
    second = AsyncResult(export_orders.send(filter={"count": 20}, name="b").message_id).get(timeout=30)
    other = AsyncResult(export_orders.send(filter={"count": 21}).message_id).get(timeout=30)
    assert second["reused"] is True and second["path"] == first["path"] and second["sha256"] == first["sha256"]
    assert other["reused"] is False
    assert len(finished_files(folders[0])) == 2


def test_a_reused_file_that_was_deleted_is_exported_again(export_worker, folders):
    first = AsyncResult(export_orders.send(filter={"count": 5}).message_id).get(timeout=30)
    (folders[0] / first["file_name"]).unlink()
    again = AsyncResult(export_orders.send(filter={"count": 5}).message_id).get(timeout=30)
    assert again["reused"] is False and (folders[0] / again["file_name"]).is_file()


def test_revoke_mid_export_stops_and_removes_the_file(export_worker, folders):
    result = AsyncResult(export_orders.send(filter={"count": 100_000, "pause": 0.0005}).message_id)
    wait_until(lambda: result.progress and result.progress["done"] >= 500, 20, "500 orders written")
    assert result.revoke()
    with pytest.raises(JobRevoked):
        result.get(timeout=10)
    wait_until(lambda: finished_files(folders[0]) == [], what="the export's files removed")
    assert result.state is JobState.REVOKED
    assert result.progress["done"] < 100_000


def test_a_bad_row_fails_at_once_naming_it_and_leaves_no_file(export_worker, folders, amqp):
    amqp.queue_purge(SLOW_QUEUE + ".XQ")
    orders = [make_order(1), make_order(2), {**make_order(3), "total": "abc"}]
    result = AsyncResult(export_orders.send(orders=orders).message_id)
    with pytest.raises(PermanentError, match="row 3: total 'abc' is not a number"):
        result.get(timeout=30)
    assert result.info()["attempt"] == 1 and finished_files(folders[0]) == []
    wait_until(lambda: queue_depth(amqp, SLOW_QUEUE + ".XQ") == 1, what="the message in the dead-letter queue")


def test_too_many_inline_orders_are_refused_at_send_time(purge, amqp):
    purge(SLOW_QUEUE)
    with pytest.raises(InvalidMessage, match=f"at most {INLINE_LIMIT}"):
        export_orders.send(orders=[make_order(1)] * (INLINE_LIMIT + 1))
    assert queue_depth(amqp, SLOW_QUEUE) == 0


def test_a_path_outside_the_import_folder_fails(export_worker):
    # Named as an order file: /etc/passwd itself is refused at send, being of no known format.
    result = AsyncResult(export_orders.send(file="../../etc/passwd.jsonl").message_id)
    with pytest.raises(PermanentError, match="outside the import folder"):
        result.get(timeout=30)

"""Past one machine, on this one: a RabbitMQ cluster of three nodes with quorum queues, workers
and a sender on hosts of their own (network namespaces). One worker's link cut mid-job: the job
is delivered again to the other worker, which finishes it, every record ends final and the
notify mail goes out once. One node stopped: senders and workers go on through the others."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from netns import Host
from ports import free_port
from private_rabbitmq import PrivateRabbitMQ
from private_redis import probe_client
from private_services import ServerProcess, require
from services import ROOT
from smtp import running_smtp_server
from waiting import wait_until

# Each test takes a while, and the three nodes the module starts half a minute more.
pytestmark = [pytest.mark.integration, pytest.mark.lasts(30)]

USER, PASSWORD = "pipeline", "cluster-pw"


def record_keys(records: redis.Redis) -> list[str]:
    """The job records under the cluster's namespace, not their companions (``:done``, the
    ``:attempts`` history)."""
    prefix = "pipeline-cluster:job:"
    return [key for key in records.scan_iter(prefix + "*") if ":" not in key.removeprefix(prefix)]


#: Seconds between AMQP heartbeats: a cut link is noticed after about two of them.
HEARTBEAT = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[PrivateRabbitMQ]]:
    """Three RabbitMQ nodes joined in one cluster (quorum queues survive one node down), with a
    user that may log in from other hosts."""
    require("rabbitmq-server")
    # The nodes run as the rabbitmq user, who must reach their folders.
    folder = Path(tempfile.mkdtemp(prefix="pipeline-cluster-"))
    shutil.chown(folder, "rabbitmq", "rabbitmq")
    nodes = [PrivateRabbitMQ(folder / name) for name in ("a", "b", "c")]
    try:
        # Started together, and the two that join made ready together; they join one by one.
        with ThreadPoolExecutor(len(nodes)) as starting:
            list(starting.map(PrivateRabbitMQ.start, nodes))
            list(starting.map(lambda node: (node.ctl("stop_app"), node.ctl("reset")), nodes[1:]))
        first = nodes[0]
        for other in nodes[1:]:
            other.ctl("join_cluster", first.node)
            other.ctl("start_app")
            other.ctl("await_startup")
        first.ctl("add_user", USER, PASSWORD)
        first.ctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis_for_hosts(servers) -> int:
    """A Redis of the test's own that the hosts reach (it listens on every interface); its port."""
    require("redis-server")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pipeline-cluster-redis-"))
    command = ["redis-server", "--port", str(port), "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "",
               "--appendonly", "no", "--dir", str(folder)]  # fmt: skip
    servers.append(ServerProcess(command, probe_client(port).ping))
    return port


def broker_url(host: Host, nodes: list[PrivateRabbitMQ]) -> str:
    """The cluster's URL as ``host`` reaches it: every node, in the given order."""
    return ";".join(f"amqp://{USER}:{PASSWORD}@{host.gateway}:{n.port}/%2F?heartbeat={HEARTBEAT}" for n in nodes)


def host_env(host: Host, nodes: list[PrivateRabbitMQ], redis_port: int, smtp_port: int, folders: Path) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIPELINE_") or key.startswith("PIPELINE_TEST_")
    }
    return env | {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")]),
        "PIPELINE_BROKER_URL": broker_url(host, nodes),
        "PIPELINE_REDIS_URL": f"redis://{host.gateway}:{redis_port}/0",
        "PIPELINE_MANAGEMENT_URL": f"http://{host.gateway}:1",
        "PIPELINE_NAMESPACE": "pipeline-cluster",
        "PIPELINE_SMTP_HOST": host.gateway,
        "PIPELINE_SMTP_PORT": str(smtp_port),
        "PIPELINE_EXPORT_DIR": str(folders / "exports"),
        "PIPELINE_IMPORT_DIR": str(folders / "imports"),
        "PIPELINE_ORDER_SOURCE": "sample_source:iter_orders",
        "PIPELINE_SERVICE_NAME": f"host-{host.index}",
        "PIPELINE_QUEUE_TYPE": "quorum",
        "dramatiq_worker_timeout": "100",
    }


def start_worker(host: Host, env: dict) -> list[str]:
    """A worker on both queues inside ``host``, once it is ready; the lines it printed (kept up to date)."""
    command = [sys.executable, "-m", "dramatiq", "pipeline.actors", "--processes", "1", "--threads", "1",
               "--queues", "default", "slow"]  # fmt: skip
    process = host.popen(command, env)
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: any("Worker process is ready" in line for line in lines), timeout=30, what="a worker up")
    return lines


def test_a_job_cut_off_with_its_worker_is_finished_by_another_and_its_mail_goes_out_once(
    cluster, hosts, redis_for_hosts, tmp_path
):
    (tmp_path / "imports").mkdir()
    first, second, sender = Host(1), Host(2), Host(3)
    hosts += [first, second, sender]
    records = redis.Redis(port=redis_for_hosts, decode_responses=True)
    with running_smtp_server(hostname="0.0.0.0") as smtp:
        env = {h: host_env(h, cluster if h is not second else cluster[::-1], redis_for_hosts, smtp.port, tmp_path)
               for h in (first, second, sender)}  # fmt: skip
        first_log = start_worker(first, env[first])

        send = (
            "from pipeline.actors import export_orders; "
            "message = export_orders.send(filter={'count': 1200, 'pause': 0.01}, notify='ops@shop.example'); "
            "print(message.message_id)"
        )
        sent = sender.run([sys.executable, "-c", send], env[sender])
        assert sent.returncode == 0, sent.stderr
        message_id = sent.stdout.strip()
        key = f"pipeline-cluster:job:{message_id}"

        def progress() -> int:
            raw = records.hget(key, "progress")
            return json.loads(raw)["done"] if raw else 0

        wait_until(lambda: progress() > 20, timeout=30, what="the export running on the first host")
        second_log = start_worker(second, env[second])
        first.cut()

        try:
            wait_until(lambda: records.hget(key, "state") == '"SUCCESS"', timeout=90, what="the export finished")
        except AssertionError as exc:
            logs = "".join(first_log) + "\n----- second host -----\n" + "".join(second_log)
            raise AssertionError(f"{exc}\nrecord: {records.hgetall(key)}\n{logs}") from None
        record = {name: json.loads(value) for name, value in records.hgetall(key).items()}
        assert record["attempt"] == 2 and record["cut_off"]["attempt"] == 1, record
        assert Path(record["result"]["path"]).is_file() and record["result"]["rows"]["Orders"] == 1200
        notified = record["result"]["notified"]["message_id"]
        wait_until(lambda: records.hget(f"pipeline-cluster:job:{notified}", "state") == '"SUCCESS"', timeout=30,
                   what="the notify mail sent")  # fmt: skip
        time.sleep(2)
        assert [mail["To"] for mail in smtp.handler.mails] == ["ops@shop.example"]
        for other in record_keys(records):
            assert records.hget(other, "state") == '"SUCCESS"', other


#: A sender that sends five pings, waits for the test's word (a file), then sends five more
#: from the same process; it prints every job id.
SEND_TWICE = """
import pathlib, sys, time
from pipeline.actors import ping
ids = [ping.send(n).message_id for n in range(5)]
go_on = pathlib.Path(sys.argv[1])
while not go_on.exists():
    time.sleep(0.05)
ids += [ping.send(n).message_id for n in range(5, 10)]
print(" ".join(ids))
"""


def test_when_a_node_goes_away_senders_and_workers_go_on_through_the_others(cluster, hosts, redis_for_hosts, tmp_path):
    (tmp_path / "imports").mkdir()
    worker_host, sender_host = Host(4), Host(5)
    hosts += [worker_host, sender_host]
    records = redis.Redis(port=redis_for_hosts, decode_responses=True)
    env = {h: host_env(h, cluster, redis_for_hosts, 1, tmp_path) for h in (worker_host, sender_host)}
    start_worker(worker_host, env[worker_host])
    go_on = tmp_path / "go-on"
    sender = sender_host.popen([sys.executable, "-c", SEND_TWICE, str(go_on)], env[sender_host])

    def finished() -> int:
        return sum(records.hget(key, "state") == '"SUCCESS"' for key in record_keys(records))

    wait_until(lambda: finished() >= 5, timeout=30, what="the first five pings done")
    # Every process here connected to the first node it lists: stop it.
    cluster[0].ctl("stop_app")
    try:
        go_on.touch()
        out, _ = sender.communicate(timeout=60)
        assert sender.returncode == 0, out
        ids = out.split()[-10:]
        wait_until(lambda: finished() >= 10, timeout=60, what="the five pings sent after the node stopped done")
        assert all(records.hget(f"pipeline-cluster:job:{i}", "state") == '"SUCCESS"' for i in ids)
    finally:
        cluster[0].ctl("start_app")
        cluster[0].ctl("await_startup")

"""Fixtures that own the real services: RabbitMQ, Redis, dramatiq worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
import redis
import testenv
from waiting import wait_until

from pipeline.store.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a worker process gets to say it is ready.
WORKER_BOOT_TIMEOUT = 30
#: Milliseconds a test worker's threads wait for work before looking whether to stop: short,
#: so a worker stops within a moment (Dramatiq's default is a second per thread and consumer).
WORKER_POLL_MS = "100"


def _require(service: str, check: Callable[[], object]) -> None:
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means the service is missing
        reason = f"{service} is not reachable: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must have it running)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client on the tests' own Redis database; the tests' keys there are removed after."""
    client = redis.Redis.from_url(testenv.REDIS_URL, decode_responses=True)
    _require("Redis", client.ping)
    yield client
    _delete_own_keys(client)
    client.close()


def _delete_own_keys(client: redis.Redis) -> None:
    keys = list(client.scan_iter(Keys(testenv.NAMESPACE).pattern(), count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@pytest.fixture
def clean_redis(redis_client: redis.Redis) -> redis.Redis:
    """The test Redis with no keys left by an earlier test."""
    _delete_own_keys(redis_client)
    return redis_client


@pytest.fixture(scope="session")
def amqp() -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A channel on the tests' vhost of the real RabbitMQ, for looking at and purging queues."""
    _require("RabbitMQ's management API", testenv.ensure_vhost)
    _require("RabbitMQ", lambda: pika.BlockingConnection(pika.URLParameters(testenv.BROKER_URL)).close())
    parameters = pika.URLParameters(testenv.BROKER_URL)
    # The session's connection may sit idle through a long test, where no heartbeat is sent:
    # without heartbeats RabbitMQ keeps it open.
    parameters.heartbeat = 0
    connection = pika.BlockingConnection(parameters)
    yield connection.channel()
    connection.close()


def queue_depth(amqp: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    """Messages ready in ``queue`` (0 when it does not exist)."""
    try:
        return amqp.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        amqp.connection.channel()
        return 0


@pytest.fixture
def purge(amqp: pika.adapters.blocking_connection.BlockingChannel, clean_redis: redis.Redis) -> Callable[[str], None]:
    """Empty a queue and its ``.DQ`` and ``.XQ`` (those that exist)."""
    return flush_queue


class WorkerProcess:
    """A ``dramatiq`` worker in a subprocess, stopped by PID; with ``gevent``, Dramatiq's
    ``dramatiq-gevent``, its threads greenlets.
    """

    def __init__(
        self, queues: list[str], threads: int, env: dict[str, str], modules: list[str], gevent: bool = False
    ) -> None:
        self.queues = queues
        runner = [str(Path(sys.executable).parent / "dramatiq-gevent")] if gevent else ["-m", "dramatiq"]
        command = [sys.executable, *runner, *modules, "--processes", "1", "--threads", str(threads)]
        command += ["--queues", *queues]
        full_env = {
            **os.environ,
            "dramatiq_worker_timeout": WORKER_POLL_MS,
            **env,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")]),
        }
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(WORKER_BOOT_TIMEOUT):
            self.stop()
            raise RuntimeError("worker did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "Worker process is ready" in line:
                self._ready.set()

    @property
    def log(self) -> str:
        """Everything the worker printed so far."""
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: no shutdown, no acks. Returns once RabbitMQ
        has closed its connections, so what it held is back in its queues (a purge that came
        first would miss it, and the next test's worker would run it).
        """
        if self.process.poll() is None:
            pids = _process_group(self.process.pid)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            _wait_connections_closed(pids)

    def discard(self) -> None:
        """Remove a worker whose test is over: its jobs have ended, so it is killed rather than
        stopped (a graceful stop costs two seconds of the ``dramatiq`` command's polling).
        """
        self.kill()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        """Stop the worker as an operator would (SIGTERM), killing it if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _process_group(pgid: int) -> list[int]:
    """The processes of process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _wait_connections_closed(pids: list[int], timeout: float = 10) -> None:
    """Wait until the tests' RabbitMQ lists no connection of the processes ``pids`` (pipeline
    names each connection after its process id); nothing to wait for on a node of a test's own.
    """
    ends = tuple(f"(pid {pid})" for pid in pids)

    def closed() -> bool:
        connections = testenv.management("GET", f"vhosts/{quote(testenv.vhost(), safe='')}/connections") or []
        names = (c.get("client_properties", {}).get("connection_name", "") for c in connections)
        return not any(name.endswith(ends) for name in names)

    wait_until(closed, timeout, "RabbitMQ closing the killed worker's connections")


def flush_queue(queue: str) -> None:
    """Declare ``queue`` on the tests' vhost and empty it, its ``.DQ`` and ``.XQ``."""
    from pipeline.broker import broker

    broker.declare_queue(queue, ensure=True)
    broker.flush(queue)


@pytest.fixture
def start_worker(redis_client: redis.Redis, amqp: object) -> Iterator[Callable[..., WorkerProcess]]:
    """Start dramatiq workers on the real services; every one started is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        queues: list[str],
        threads: int = 2,
        env: dict[str, str] | None = None,
        modules: list[str] | None = None,
        gevent: bool = False,
    ) -> WorkerProcess:
        worker = WorkerProcess(queues, threads, env or {}, modules or ["pipeline.actors", "sample_actors"], gevent)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.discard()
    # What they left in the schedule (mails waiting for a rate limit's slot, retries waiting out
    # a backoff) would be published by the next test's worker on the same queue.
    keys = Keys(testenv.NAMESPACE)
    for queue in {queue for worker in started for queue in worker.queues}:
        redis_client.delete(keys.scheduled(queue), keys.scheduled_messages(queue))

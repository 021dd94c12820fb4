"""A Redis server of a test's own, on a free port, that the test may freeze, break or stop.

The machine's shared Redis is never touched by fault tests: they run against this one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from ports import free_port
from redis.backoff import NoBackoff
from redis.retry import Retry


def probe_client(port: int, **options: Any) -> redis.Redis:
    """A client of the Redis on ``port`` that asks once: redis-py's default retries a refused
    connection three times, sleeping a random time of up to 2, 4 and 8 s before each, so a
    server still starting would be seen a second or more after it is up.
    """
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0), **options)


class PrivateRedis:
    """A ``redis-server`` subprocess on 127.0.0.1, started and stopped by PID.

    Parameters:
      folder: Where it runs (it keeps nothing on disk).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """Its URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client that does not wait long for a frozen server."""
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def start(self) -> None:
        """Start (or start again) the server on its port and wait until it answers."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            # Closed at once: a client left to the collector keeps its connection in the
            # server's list, where tests count the connections they made.
            client = probe_client(self.port)
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """Stop the server (a clean shutdown), as an outage would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)

    def freeze(self) -> None:
        """Stop the process without closing anything: connections hang, as on a frozen host."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own; skipped without ``redis-server`` (failed in CI)."""
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()

"""Servers of a test's own for the deployments users run past one machine: Redis with TLS and
an ACL user, Redis primary, replica and sentinel. Each runs on free ports in the test's folder
and is stopped by PID at the end; the machine's services are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import trustme
from ports import free_port
from private_redis import probe_client


def require(command: str) -> None:
    """Skip (fail in CI) when ``command`` is not installed."""
    if shutil.which(command) is None:
        reason = f"{command} is not installed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class ServerProcess:
    """A server subprocess started with ``command``, ready once ``ready()`` is true."""

    def __init__(self, command: list[str], ready: Callable[[], object], timeout: float = 15) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{command[0]} did not start: {' '.join(command)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (SIGKILL when SIGTERM is not enough)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """A list the test adds its servers to; each is stopped after the test."""
    started: list[ServerProcess] = []
    yield started
    for server in reversed(started):
        server.stop()


def redis_command(folder: Path, port: int, *extra: str) -> list[str]:
    """A ``redis-server`` command line on ``port`` that keeps nothing on disk."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), *extra]  # fmt: skip


def tls_redis(folder: Path, servers: list[ServerProcess], user: str, password: str) -> tuple[int, Path]:
    """A Redis that speaks only TLS (a certificate for ``localhost`` from a CA of the test's own)
    and admits only ACL user ``user`` with ``password``; its port and the CA bundle.
    """
    require("redis-server")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    command = redis_command(folder, 0, "--tls-port", str(port), "--tls-cert-file", str(cert_file),
                            "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(ca_file),
                            "--tls-auth-clients", "no", "--user", "default", "off",
                            "--user", user, "on", f">{password}", "~*", "&*", "+@all")  # fmt: skip

    def ready() -> bool:
        client = probe_client(port, host="localhost", ssl=True, ssl_ca_certs=str(ca_file),
                              username=user, password=password)  # fmt: skip
        return bool(client.ping())

    servers.append(ServerProcess(command, ready))
    return port, ca_file


def sentinel_setup(folder: Path, servers: list[ServerProcess], service: str) -> tuple[int, int, int]:
    """A primary, its replica and one sentinel watching them as ``service`` (quorum 1, a primary
    down after one second); their ports.
    """
    require("redis-server")
    primary, replica, sentinel = free_port(), free_port(), free_port()
    servers.append(ServerProcess(redis_command(folder, primary), probe_client(primary).ping))
    servers.append(
        ServerProcess(
            redis_command(folder, replica, "--replicaof", "127.0.0.1", str(primary)),
            lambda: probe_client(replica).info("replication")["master_link_status"] == "up",
        )
    )
    config = folder / "sentinel.conf"
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {service} 127.0.0.1 {primary} 1\n"
        f"sentinel down-after-milliseconds {service} 1000\n"
        f"sentinel failover-timeout {service} 5000\n"
    )
    servers.append(
        ServerProcess(
            ["redis-server", str(config), "--sentinel"],
            lambda: _replica_eligible(sentinel, service, replica),
        )
    )
    return primary, replica, sentinel


def _replica_eligible(sentinel: int, service: str, replica: int) -> bool:
    """Whether the sentinel could promote ``replica`` now: it lists it, and has read from the
    replica itself that its link to the primary is up (until then a ``SENTINEL FAILOVER`` is
    refused with ``NOGOODSLAVE``).
    """
    entries = probe_client(sentinel, decode_responses=True).execute_command("SENTINEL", "REPLICAS", service)
    for entry in entries or []:
        fields = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
        if str(fields.get("port")) == str(replica):
            return fields.get("flags") == "slave" and fields.get("master-link-status") == "ok"
    return False

"""Hosts of a test's own on this machine: network namespaces, each joined to the machine by a
veth pair (loopback and veth only, no bridge, no route out), whose link the test can cut.

From inside host ``n`` the machine is ``10.231.n.1``; the host itself is ``10.231.n.2``.
Services the hosts reach must listen on every interface (or on the ``10.231.n.1`` addresses).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

#: The /16 the hosts' links take their addresses from; each host has a /24 of its own.
SUBNET = "10.231"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Host:
    """A network namespace linked to the machine.

    Parameters:
      index: The host's number (1-250): its addresses and interface names.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        tag = f"{os.getpid() % 10000}x{index}"
        self.namespace = f"pipeline-{tag}"
        self.outside = f"plo{tag}"[:15]
        self.gateway = f"{SUBNET}.{index}.1"
        self.address = f"{SUBNET}.{index}.2"
        self.processes: list[subprocess.Popen[str]] = []
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self.outside, "type", "veth", "peer", "name", "eth0", "netns", self.namespace)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.outside)
        _ip("link", "set", self.outside, "up")
        _ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", self.namespace, "link", "set", "eth0", "up")
        _ip("-n", self.namespace, "link", "set", "lo", "up")

    def popen(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        """Start ``command`` inside the host, its output (both streams) in a pipe; stopped in :meth:`close`."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def run(self, command: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the host to its end."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *command], env=env, capture_output=True, text=True, timeout=timeout
        )

    def cut(self) -> None:
        """Cut the host's link: nothing it sends arrives, nothing reaches it, and nobody is told."""
        _ip("link", "set", self.outside, "down")

    def close(self) -> None:
        """Kill what runs inside and remove the namespace and its link."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True, timeout=10)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    """A list the test adds its hosts to (``Host(n)``); all are removed after the test. Skipped
    (failed in CI) when the machine cannot make network namespaces.
    """
    reason = None
    if shutil.which("ip") is None:
        reason = "iproute2's ip is not installed"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    else:
        probe = subprocess.run(["ip", "netns", "add", f"pipeline-probe-{os.getpid()}"], capture_output=True)
        if probe.returncode != 0:
            reason = f"network namespaces cannot be made here: {probe.stderr.decode().strip()}"
        subprocess.run(["ip", "netns", "del", f"pipeline-probe-{os.getpid()}"], capture_output=True)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    made: list[Host] = []
    yield made
    for host in made:
        host.close()

"""A RabbitMQ node of a test's own, on free ports, that the test may restart.

The machine's shared RabbitMQ is never stopped by fault tests: they run against this node,
started with the distribution's ``rabbitmq-server`` under another node name, ports and folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from ports import free_port

#: Seconds the node gets to start or stop.
NODE_TIMEOUT = 90


class PrivateRabbitMQ:
    """A ``rabbitmq-server`` node in ``folder``, started with :meth:`start`, stopped with :meth:`stop`.

    Parameters:
      folder: Where it keeps its data and logs.
      config: Lines of a ``rabbitmq.conf`` (none by default).
    """

    def __init__(self, folder: Path, config: str = "") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "rabbitmq", "rabbitmq")
        if config:
            (folder / "rabbitmq.conf").write_text(config)
        self.config = config
        self._choose_ports()

    def _choose_ports(self) -> None:
        """Free ports for the node, and the node's name and environment, which follow them."""
        self.port = free_port()
        self.node = f"pipeline-test-{self.port}@localhost"
        dist_port = free_port()
        while dist_port == self.port:
            dist_port = free_port()
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.folder / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / ("rabbitmq.conf" if self.config else "none")),
        }

    def start(self, attempts: int = 3) -> None:
        """Start the node and wait until it runs (the first moments, it is not even known).

        A port found free may be taken by another process of the suite before the node binds
        it; a node that did not start is stopped and started again on other ports.
        """
        for attempt in range(1, attempts + 1):
            subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, timeout=NODE_TIMEOUT)
            try:
                self.ctl_until_done("await_startup", while_=self._alive)
                return
            except subprocess.CalledProcessError as exc:
                tail = self.log_tail()
                self.stop()
                if attempt == attempts:
                    raise RuntimeError(f"RabbitMQ node {self.node} did not start; its log ends:\n{tail}") from exc
            (self.folder / "pid").unlink(missing_ok=True)
            self._choose_ports()

    def _alive(self) -> bool:
        """False once the node's process has ended (True while it has not written its pid yet)."""
        try:
            os.kill(int((self.folder / "pid").read_text().strip()), 0)
        except (FileNotFoundError, ValueError):
            return True
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the node's logs."""
        tails = []
        for log in sorted((self.folder / "log").glob("*.log")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(tails) or "(no log)"

    @property
    def url(self) -> str:
        """The node's AMQP URL (guest may log in from localhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def ctl(self, *command: str) -> None:
        """Run ``rabbitmqctl`` against this node."""
        subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *command],
            env=self.env,
            check=True,
            timeout=NODE_TIMEOUT,
            capture_output=True,
        )

    def ctl_until_done(self, *command: str, while_: Callable[[], bool] = lambda: True) -> None:
        """Run ``rabbitmqctl`` until it succeeds: a node starting, or stopping its app, or a
        busy machine, may leave the CLI unable to reach it for a moment (exit 69, unavailable).
        Tries stop early once ``while_`` says there is no point (the node's process ended).
        """
        deadline = time.monotonic() + NODE_TIMEOUT
        while True:
            try:
                self.ctl(*command)
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or not while_():
                    raise
                time.sleep(0.5)

    def restart(self) -> None:
        """Stop the broker on the node and start it again: every connection is closed."""
        self.ctl("stop_app")
        self.ctl_until_done("start_app")
        self.ctl_until_done("await_startup")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block, the node's process is stopped (SIGSTOP): its TCP connections stay
        open and it answers nothing, as a node stalled by its host would; then it goes on.
        """
        pid = int((self.folder / "pid").read_text().strip())
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def reachable(self) -> bool:
        """True when the node takes AMQP connections."""
        try:
            pika.BlockingConnection(pika.URLParameters(self.url)).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def stop(self) -> None:
        """Kill the node: its data is thrown away with its folder, so nothing needs a clean stop."""
        pid_file = self.folder / "pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        else:
            command = ["rabbitmqctl", "-q", "-n", self.node, "stop"]
            subprocess.run(command, env=self.env, timeout=NODE_TIMEOUT, check=False, capture_output=True)


@pytest.fixture
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of the test's own; skipped without ``rabbitmq-server`` (failed in CI)."""
    with running_node("pipeline-rabbitmq-") as node:
        yield node


@contextlib.contextmanager
def running_node(prefix: str, config: str = "") -> Iterator[PrivateRabbitMQ]:
    """A node of the test's own with ``config`` (lines of a ``rabbitmq.conf``), started, then
    stopped and its folder removed; skipped without ``rabbitmq-server`` (failed in CI).
    """
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        reason = "rabbitmq-server is not installed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    # The server runs as the rabbitmq user, who cannot reach pytest's own temporary folders.
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(folder, "rabbitmq", "rabbitmq")
    node = PrivateRabbitMQ(folder / "node", config)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(folder, ignore_errors=True)

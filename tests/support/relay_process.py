"""An SMTP relay in a process of its own, for the tests that hold the relay's clock to account.

A relay is a process of its own: what it sees of the mail rate is when each mail reaches it. A
server on a thread of the test's process would see it late whenever that process holds the
interpreter (its garbage collector, a send of a thousand messages), and then see the mails
that waited meanwhile all at once: a burst no worker sent.

Run as a script (``python relay_process.py PORT``), it prints ``ready``, then a line for each
mail it accepts: its arrival on the machine's monotonic clock and its Message-ID.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from types import TracebackType

from aiosmtpd.controller import Controller
from ports import free_port
from waiting import wait_for_arrivals

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


class _Arrivals:
    """The aiosmtpd handler: takes every mail and says when it came."""

    async def handle_DATA(self, server, session, envelope):
        found = MESSAGE_ID.search(envelope.content)
        sys.stdout.write(f"{time.monotonic()} {found.group(1).decode() if found else '-'}\n")
        sys.stdout.flush()
        return "250 Message accepted"


class RelayProcess:
    """An SMTP server on a free port in a subprocess; use it in a ``with`` block.

    ``arrival_times`` (``time.monotonic()``, which every process of the machine shares) and
    ``message_ids`` grow, in order, as mails arrive.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.arrival_times: list[float] = []
        self.message_ids: list[str] = []
        self._arrived = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the relay did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            at, message_id = line.split()
            with self._arrived:
                self.arrival_times.append(float(at))
                self.message_ids.append(message_id)
                self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        """Block until ``count`` mails arrived; fail after ``timeout`` seconds."""
        wait_for_arrivals(self._arrived, self.message_ids, count, timeout)

    def close(self) -> None:
        """Stop the relay (its stdin closed) and wait for it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _serve(port: int) -> None:
    controller = Controller(_Arrivals(), hostname="127.0.0.1", port=port)
    controller.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the test closes it
    controller.stop()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))

"""Free local ports for the servers the tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: How many ports below the kernel's ephemeral range a free port is looked for in.
SPAN = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server about to start.

    It is taken below the kernel's ephemeral range: a port of that range, found free, can be
    given to the local end of any outgoing connection (the suite opens thousands) before the
    server binds it, and a private RabbitMQ node that cannot bind its port never starts.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - SPAN), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port found below {low}")

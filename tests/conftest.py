"""Fixtures shared by every test: the test settings and the real services.

Tests run on a RabbitMQ vhost and a Redis database of their own (see ``tests/support/testenv.py``)
and delete only their own keys there; queues are purged before the tests that use them. A
missing RabbitMQ or Redis skips the integration tests with the reason on a laptop, and fails
them when ``CI`` is set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

import testenv  # noqa: E402 - found through the path set just above

# Settings are read once per process, so the test environment is set before pipeline is imported.
os.environ.update(testenv.ENV)

pytest_plugins = [
    "alone",
    "lanes",
    "browser",
    "services",
    "smtp",
    "private_redis",
    "private_rabbitmq",
    "private_services",
    "netns",
]

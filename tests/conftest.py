"""Fixtures shared by every test: the test settings and the real services.

Tests use Redis database 15 (their own) and delete only ``pipeline:*`` keys there; queues are
purged before the tests that use them. A missing RabbitMQ or Redis skips the integration tests
with the reason on a laptop, and fails them when ``CI`` is set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Settings are read once per process, so the test environment is set before pipeline is imported.
TEST_ENV = {
    "PIPELINE_REDIS_URL": "redis://127.0.0.1:6379/15",
    "PIPELINE_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
}
os.environ.update(TEST_ENV)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

pytest_plugins = ["services", "smtp"]

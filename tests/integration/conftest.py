"""Every integration test runs against the real services, on the tests' own vhost and database."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _services(amqp: object, redis_client: object) -> None:
    """Make sure RabbitMQ (with the tests' vhost) and Redis are there before the test runs."""

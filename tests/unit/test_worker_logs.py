"""The filters on Dramatiq's loggers, on log records as Dramatiq makes them."""

from __future__ import annotations

import logging

from pipeline.jobs.logs import NamedBroker


def test_a_connection_error_names_a_broker_url_holding_percent_signs_and_still_formats():
    record = logging.LogRecord(
        "dramatiq.worker.ConsumerThread(slow)", logging.CRITICAL, __file__, 1,
        "Consumer encountered a connection error: %s", (ConnectionError("heartbeat missed"),), None,
    )  # fmt: skip
    assert NamedBroker("amqp://shop:***@mq:5672/%2F?heartbeat=2").filter(record)
    assert record.getMessage() == (
        "Consumer encountered a connection error: heartbeat missed (RabbitMQ at amqp://shop:***@mq:5672/%2F?heartbeat=2)"
    )

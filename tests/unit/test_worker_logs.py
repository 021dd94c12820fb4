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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_worker_threads_make_no_record_of_the_discarded_value_warning_and_keep_the_others():
    from types import SimpleNamespace

    from dramatiq.logging import get_logger
    from dramatiq.worker import WorkerThread

    from pipeline.jobs.logs import WORKER_THREAD_LOGGER, WorkerLogs

    captured = _Records()
    logger = logging.getLogger(WORKER_THREAD_LOGGER)
    logger.addHandler(captured)
    # Every record made, dropped by a filter or not: the warning must cost no record at all.
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting_factory(*args, **kwargs):
        record = factory(*args, **kwargs)
        made.append(str(record.msg))
        return record

    logging.setLogRecordFactory(counting_factory)
    try:
        thread = SimpleNamespace(logger=get_logger("dramatiq.worker", WorkerThread))
        WorkerLogs("amqp://guest:***@localhost:5672/%2F").after_worker_boot(
            None, SimpleNamespace(workers=[thread], consumers={})
        )
        thread.logger.warning(
            "Actor 'ping' returned a value that is not None, and you haven't added the Results middleware to the "
            "broker, so the value has been discarded."
        )
        thread.logger.warning("Message %s was skipped.", "ping(job 1)")
        thread.logger.error("Failed to process message %s with unhandled exception.", "ping(job 2)")
    finally:
        logging.setLogRecordFactory(factory)
        logger.removeHandler(captured)
    assert not [msg for msg in made if "haven't added the Results middleware" in msg]
    assert [r.getMessage() for r in captured.records] == [
        "Message ping(job 1) was skipped.",
        "Failed to process message ping(job 2) with unhandled exception.",
    ]
    assert captured.records[0].filename == "test_worker_logs.py"

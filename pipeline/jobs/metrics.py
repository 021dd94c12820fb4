"""Prometheus metrics of a worker, served when ``PIPELINE_METRICS_PORT`` is set.

Dramatiq's own ``Prometheus`` middleware counts what an operator asks of a worker: messages by
queue and actor (``dramatiq_messages_total``, of which ``dramatiq_message_errors_total``
failed), retries (``dramatiq_message_retries_total``), dead-letters
(``dramatiq_message_rejects_total``), the messages in flight
(``dramatiq_messages_inprogress``, ``dramatiq_delayed_messages_inprogress``) and durations
(``dramatiq_message_duration_milliseconds``). The ``dramatiq`` command serves them from a
process of its own on the port from the settings, across all worker processes (the host is
Dramatiq's ``dramatiq_prom_host``, every interface by default).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from dramatiq.middleware import Middleware

from pipeline.errors import SettingsError
from pipeline.jobs.boot_checks import stop_at_boot
from pipeline.settings import Settings, get_settings


def serve_metrics() -> None:
    """Serve the metrics of every worker process on ``PIPELINE_METRICS_PORT`` until stopped.

    The ``dramatiq`` command runs it in a process of its own, which imports it by name: the
    port is read from the settings there. Each scrape reads the worker processes' metric files
    (prometheus_client's multiprocess mode, in the folder Dramatiq's middleware keeps them in).
    """
    # Imported here: the HTTP server (and what it loads) only in the process that serves.
    from wsgiref.simple_server import make_server

    from dramatiq.middleware import prometheus

    # Set before prometheus_client is imported: it picks its multiprocess mode then.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prometheus.DB_PATH
    from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    port = get_settings().metrics_port or prometheus.HTTP_PORT
    with make_server(prometheus.HTTP_HOST, port, make_wsgi_app(registry)) as server:
        server.serve_forever()


class WorkerMetrics(Middleware):
    """Dramatiq's ``Prometheus`` middleware on ``PIPELINE_METRICS_PORT``, when it is set.

    Whether metrics are on is read from the settings when a worker first asks (its forks, its
    process's boot), not when the broker is built: a service that imports the actors reads no
    setting then.

    Parameters:
      settings: Give the port.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built = False
        self._prometheus: Middleware | None = None

    def _on(self) -> Middleware | None:
        """Dramatiq's middleware when metrics are on, else None.

        Raises:
          SettingsError: A port is set but ``prometheus-client`` is not installed.
        """
        if not self._built:
            self._prometheus = _prometheus(self.settings)
            self._built = True
        return self._prometheus

    @property
    def forks(self) -> list[Any]:
        """The process that serves the metrics, when they are on."""
        on = self._on()
        return list(on.forks) if on is not None else []

    def after_process_boot(self, broker: Any) -> None:
        """Dramatiq's; a bad setting stops the process, as
        :class:`~pipeline.jobs.boot_checks.SettingsAtStart` does (this hook runs before its own:
        Dramatiq calls the last middleware's first).
        """
        try:
            on = self._on()
        except SettingsError as exc:
            stop_at_boot(exc)
        if on is not None:
            on.after_process_boot(broker)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """Dramatiq's."""
        if (on := self._on()) is not None:
            on.after_worker_shutdown(broker, worker)

    def after_nack(self, broker: Any, message: Any) -> None:
        """Dramatiq's."""
        if (on := self._on()) is not None:
            on.after_nack(broker, message)

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        """Dramatiq's."""
        if (on := self._on()) is not None:
            on.after_enqueue(broker, message, delay)

    def before_delay_message(self, broker: Any, message: Any) -> None:
        """Dramatiq's."""
        if (on := self._on()) is not None:
            on.before_delay_message(broker, message)

    def before_process_message(self, broker: Any, message: Any) -> None:
        """Dramatiq's."""
        if (on := self._on()) is not None:
            on.before_process_message(broker, message)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        """Dramatiq's."""
        if (on := self._on()) is not None:
            on.after_process_message(broker, message, result=result, exception=exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        """Dramatiq's (a skipped message is a processed one to Prometheus too)."""
        if (on := self._on()) is not None:
            on.after_skip_message(broker, message)


def _prometheus(settings: Settings) -> Middleware | None:
    """Dramatiq's ``Prometheus`` middleware on ``settings.metrics_port``; None when it is unset.

    Raises:
      SettingsError: A port is set but ``prometheus-client`` is not installed.
    """
    if settings.metrics_port is None:
        return None
    # Asked without importing it: prometheus_client picks its multiprocess mode when imported,
    # which Dramatiq's middleware sets up only once the worker process has booted.
    if importlib.util.find_spec("prometheus_client") is None:
        raise SettingsError(
            "PIPELINE_METRICS_PORT",
            str(settings.metrics_port),
            "metrics need prometheus-client: install pipeline with its 'metrics' extra",
        )
    from dramatiq.middleware.prometheus import Prometheus

    class PipelineMetrics(Prometheus):
        """Dramatiq's metrics, served on the port of the settings rather than ``dramatiq_prom_port``."""

        @property
        def forks(self) -> list[Any]:
            return [serve_metrics]

    return PipelineMetrics()

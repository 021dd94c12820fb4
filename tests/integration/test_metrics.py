"""Worker metrics for Prometheus: off unless a port is set, then counted by actor and outcome."""

from __future__ import annotations

import urllib.request

import pytest
from ports import free_port
from testenv import make_settings
from waiting import wait_until

from pipeline.actors import ping
from pipeline.broker import build_broker
from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return ""


def test_metrics_are_off_unless_a_port_is_set():
    from dramatiq.middleware.prometheus import Prometheus

    from pipeline.jobs.metrics import WorkerMetrics, serve_metrics

    def metrics(settings):
        (found,) = [m for m in build_broker(settings).middleware if isinstance(m, WorkerMetrics)]
        return found

    off, on = metrics(make_settings()), metrics(make_settings(metrics_port=9999))
    assert off.forks == [] and off._on() is None
    assert on.forks == [serve_metrics] and isinstance(on._on(), Prometheus)


@pytest.mark.parametrize("runner", ["threads", "gevent"])
def test_a_worker_serves_messages_by_actor_and_outcome_on_the_port_set(purge, start_worker, tmp_path, runner):
    purge(DEFAULT_QUEUE)
    port = free_port()
    env = {"PIPELINE_METRICS_PORT": str(port), "dramatiq_prom_db": str(tmp_path), "dramatiq_prom_host": "127.0.0.1"}
    start_worker([DEFAULT_QUEUE], threads=2, env=env, gevent=runner == "gevent")
    for message in [ping.send(i) for i in range(5)]:
        AsyncResult(message.message_id).get(timeout=20)
    line = 'dramatiq_messages_total{actor_name="ping",queue_name="default"} 5.0'
    wait_until(lambda: line in scrape(port), what="five ping messages counted on /metrics")
    text = scrape(port)
    assert "dramatiq_message_duration_milliseconds_bucket" in text
    assert "dramatiq_messages_inprogress" in text

"""The tests' own services and settings, in one place.

The service URLs come from the environment (``PIPELINE_TEST_BROKER_URL``,
``PIPELINE_TEST_REDIS_URL``, ``PIPELINE_TEST_MANAGEMENT_URL``) and default to the machine's
RabbitMQ and Redis, on a vhost (``pipeline-test``) and a database (15) of the tests' own, so
running the tests never touches what a worker or the demo uses. Every Redis key the tests make
is under the namespace ``pipeline-test``.

Tests run in several processes at once (pytest-xdist): each process takes a vhost, a namespace
and an export folder of its own, the worker's name after the usual one (``pipeline-test-gw1``),
so no two see each other's queues, keys or files.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

#: The pytest-xdist worker this process is ("gw0", "gw1", ...), empty when the tests run in one.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _own(name: str) -> str:
    """``name`` made this test process's own: the xdist worker's name after it."""
    return f"{name}-{WORKER}" if WORKER else name


def _own_vhost(url: str) -> str:
    split = urlsplit(url)
    return urlunsplit(split._replace(path="/" + quote(_own(unquote(split.path.lstrip("/")) or "/"), safe="")))


NAMESPACE = _own("pipeline-test")
BROKER_URL = _own_vhost(os.environ.get("PIPELINE_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/pipeline-test"))
REDIS_URL = os.environ.get("PIPELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MANAGEMENT_URL = os.environ.get("PIPELINE_TEST_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")

#: What every process of the tests (pytest and the workers it starts) reads its settings from.
ENV = {
    "PIPELINE_BROKER_URL": BROKER_URL,
    "PIPELINE_REDIS_URL": REDIS_URL,
    "PIPELINE_MANAGEMENT_URL": MANAGEMENT_URL,
    "PIPELINE_NAMESPACE": NAMESPACE,
    # Exports and imports land in no folder of the checkout.
    "PIPELINE_EXPORT_DIR": os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{NAMESPACE}-exports"),
}


def make_settings(**overrides: Any) -> Any:
    """Settings of the tests' services with ``overrides`` (field names, as for ``Settings``)."""
    from pipeline.settings import Settings

    return dataclasses.replace(Settings.from_env(ENV), **overrides)


def vhost() -> str:
    """The RabbitMQ vhost of the tests."""
    return unquote(urlsplit(BROKER_URL).path.lstrip("/")) or "/"


def management(method: str, path: str, body: object | None = None) -> Any:
    """Call RabbitMQ's management HTTP API; the parsed JSON answer, or None."""
    split = urlsplit(MANAGEMENT_URL)
    base = f"{split.scheme}://{split.hostname}:{split.port}"
    request = urllib.request.Request(base + "/api/" + path, method=method)
    token = base64.b64encode(f"{unquote(split.username or '')}:{unquote(split.password or '')}".encode()).decode()
    request.add_header("Authorization", "Basic " + token)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, data=data, timeout=10) as answer:
        raw = answer.read()
    return json.loads(raw) if raw else None


def ensure_vhost() -> None:
    """Create the tests' vhost and let the broker URL's user use it (nothing if it exists)."""
    name = quote(vhost(), safe="")
    user = unquote(urlsplit(BROKER_URL).username or "guest")
    management("PUT", f"vhosts/{name}", {})
    management("PUT", f"permissions/{name}/{quote(user, safe='')}", {"configure": ".*", "write": ".*", "read": ".*"})

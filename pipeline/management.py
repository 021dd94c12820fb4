"""A small client of RabbitMQ's management HTTP API: what the server says of itself and its queues.

Workers read a queue's consumer timeout through it at start-up. Only the standard library's
``urllib`` is used: a few GET requests do not justify an HTTP client dependency.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pipeline.errors import ManagementUnavailable
from pipeline.queues import QUEUES as PIPELINE_QUEUES
from pipeline.settings import Settings, mask_url

#: The management plugin's default port.
MANAGEMENT_PORT = 15672
#: Seconds a request to the management API may take.
MANAGEMENT_TIMEOUT = 3.0


def management_url(settings: Settings) -> str:
    """The management API's URL: ``PIPELINE_MANAGEMENT_URL``, else the first broker node's host
    and credentials on port 15672 (``https`` for an ``amqps`` broker).
    """
    if settings.management_url:
        return settings.management_url
    broker = urlsplit(settings.broker_url.split(";")[0])
    scheme = "https" if broker.scheme == "amqps" else "http"
    credentials = ""
    if broker.username is not None:
        credentials = broker.username + (f":{broker.password}" if broker.password is not None else "") + "@"
    return f"{scheme}://{credentials}{broker.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}"


def broker_vhost(settings: Settings) -> str:
    """The virtual host the broker URL names (``/`` when it names none)."""
    path = urlsplit(settings.broker_url.split(";")[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class ManagementApi:
    """GET requests to RabbitMQ's management API.

    Parameters:
      url: The API's base URL, credentials in it (``http://user:password@host:15672``).
      timeout: Seconds a request may take.
    """

    def __init__(self, url: str, timeout: float = MANAGEMENT_TIMEOUT) -> None:
        split = urlsplit(url)
        self.base = f"{split.scheme}://{split.hostname}:{split.port or MANAGEMENT_PORT}{split.path.rstrip('/')}"
        self.masked = mask_url(url)
        user, password = unquote(split.username or "guest"), unquote(split.password or "guest")
        self._authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> ManagementApi:
        """The API of the broker ``settings`` name."""
        return cls(management_url(settings))

    def get(self, path: str) -> Any:
        """The parsed JSON answer to ``GET /api/<path>``.

        Raises:
          ManagementUnavailable: The API could not be reached, refused the request or did not
            answer JSON; the message names the masked URL.
        """
        request = urllib.request.Request(f"{self.base}/api/{path}", headers={"Authorization": self._authorization})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise ManagementUnavailable(
                f"RabbitMQ's management API at {self.masked} answered {exc.code} {exc.reason} to /api/{path}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ManagementUnavailable(f"RabbitMQ's management API at {self.masked} did not answer: {exc}") from exc

    def version(self) -> str:
        """The RabbitMQ version of the node that answers."""
        return str(self.get("overview").get("rabbitmq_version", "unknown"))

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """What the server says of every queue in ``vhost``."""
        return list(self.get(f"queues/{quote(vhost, safe='')}"))

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        """What the server says of queue ``name`` in ``vhost``."""
        return dict(self.get(f"queues/{quote(vhost, safe='')}/{quote(name, safe='')}"))


def queue_consumer_timeout(queue: dict[str, Any]) -> int | None:
    """The consumer timeout (milliseconds) a queue's own argument or policy sets, the lower of the
    two when both do; None when neither does and the node-wide ``consumer_timeout`` applies.

    RabbitMQ 3.12 and later honour both; the node-wide value is not exposed by the API.
    """
    found = [
        value
        for value in (
            (queue.get("arguments") or {}).get("x-consumer-timeout"),
            (queue.get("effective_policy_definition") or {}).get("consumer-timeout"),
        )
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    return min(found) if found else None


def with_companions(queues: Iterable[str]) -> list[str]:
    """Each queue followed by its delay queue (retries) and its dead letters, as shown."""
    return [name for queue in queues for name in (queue, queue + ".DQ", queue + ".XQ")]


#: pipeline's own queues as shown when the server is not asked which others there are.
QUEUES = with_companions(PIPELINE_QUEUES)


def dramatiq_queues(names: Iterable[str]) -> list[str]:
    """Of a virtual host's queue names, the queues Dramatiq declared (each has its ``.XQ``):
    pipeline's own first, declared or not, then those of other services' actors, by name.
    """
    others = {name.removesuffix(".XQ") for name in names if name.endswith(".XQ")} - set(PIPELINE_QUEUES)
    return [*PIPELINE_QUEUES, *sorted(others)]


def _rate(stats: dict[str, Any], name: str) -> float | None:
    details = stats.get(f"{name}_details")
    return float(details["rate"]) if isinstance(details, dict) and "rate" in details else None


def from_management(api: ManagementApi, vhost: str) -> list[dict[str, Any]]:
    """Each queue of pipeline's and of other services' actors (see :func:`dramatiq_queues`) as
    the management API describes it (a queue not declared yet is left out).
    """
    known = {queue["name"]: queue for queue in api.queues(vhost)}
    rows = []
    for name in with_companions(dramatiq_queues(known)):
        queue = known.get(name)
        if queue is None:
            continue
        stats = queue.get("message_stats") or {}
        rows.append(
            {
                "queue": name,
                "ready": queue.get("messages_ready", 0),
                "unacked": queue.get("messages_unacknowledged", 0),
                "consumers": queue.get("consumers", 0),
                "publish_rate": _rate(stats, "publish"),
                "deliver_rate": _rate(stats, "deliver_get"),
                "ack_rate": _rate(stats, "ack"),
                "max_priority": (queue.get("arguments") or {}).get("x-max-priority"),
            }
        )
    return rows

"""The Redis URLs pipeline takes, and the redis-py client each one makes.

- ``redis://[user[:password]@]host:port/db`` and ``rediss://...`` (TLS, its CA bundle from
  ``PIPELINE_REDIS_CA_FILE``), with a Redis ACL user and password in the URL;
- ``unix:///path/to/socket?db=N``;
- ``redis+sentinel://[user[:password]@]host:port[,host:port...]/service[/db]``, and
  ``rediss+sentinel://`` for TLS: Redis Sentinel is asked for the primary of ``service``,
  and the client follows a failover. The user and password are the data nodes'; sentinels that
  want one of their own take ``PIPELINE_REDIS_SENTINEL_PASSWORD``.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.settings import Settings

#: Schemes of a Sentinel URL, without and with TLS.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: Port of a sentinel the URL gives without one.
SENTINEL_PORT = 26379


@dataclasses.dataclass(frozen=True)
class SentinelUrl:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The sentinels, service, database and credentials of a Sentinel URL.

    Raises:
      ValueError: The URL names no sentinel or no service, or a port or database is not a number.
    """
    split = urlsplit(url)
    credentials, _, hosts = split.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", str(SENTINEL_PORT))
        sentinels.append((name, int(port)))
    parts = [part for part in split.path.split("/") if part]
    if not sentinels or not parts:
        raise ValueError("a Sentinel URL names its sentinels and service: redis+sentinel://host:26379/service/0")
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) > 1 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=split.scheme.startswith("rediss"),
    )


def make_client(settings: Settings, timeout: float | None = None) -> redis.Redis:
    """The redis-py client of ``settings.redis_url``, with the settings' timeouts (each
    ``timeout`` at most, when given) and CA bundle.
    """
    connect_timeout, socket_timeout = settings.redis_connect_timeout, settings.redis_socket_timeout
    if timeout is not None:
        connect_timeout, socket_timeout = min(connect_timeout, timeout), min(socket_timeout, timeout)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        # One more try on a new connection when Redis closed the old one; a Redis that does not
        # answer in time is not waited for again (redis-py's default retries three times, with
        # backoff: a frozen Redis would hold a caller for half a minute).
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }
    url = settings.redis_url
    if urlsplit(url).scheme not in SENTINEL_SCHEMES:
        if url.startswith("rediss:") and settings.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_ca_file)
        return redis.Redis.from_url(url, **options)
    named = parse_sentinel_url(url)
    tls: dict[str, Any] = {}
    if named.tls:
        tls = {"ssl": True, "ssl_ca_certs": str(settings.redis_ca_file) if settings.redis_ca_file else None}
    sentinel_options = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "password": settings.redis_sentinel_password,
        **tls,
    }
    sentinel = redis.sentinel.Sentinel(named.sentinels, sentinel_kwargs=sentinel_options)
    return sentinel.master_for(
        named.service, db=named.db, username=named.username, password=named.password, **tls, **options
    )

"""Every setting of pipeline, read once from ``PIPELINE_*`` environment variables.

A setting named ``result_ttl`` is read from ``PIPELINE_RESULT_TTL``; its type comes from the
field's annotation and a bad value raises :class:`~pipeline.errors.SettingsError` naming the
variable and the value. The defaults work against RabbitMQ, Redis and an SMTP server on
127.0.0.1. No other module reads ``os.environ``: they take a :class:`Settings`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.amqp_text import SHORT_TEXT, is_short_text
from pipeline.errors import SettingsError, shown
from pipeline.header_text import first_header_breaker
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE

#: Prefix of every environment variable pipeline reads.
ENV_PREFIX = "PIPELINE_"

#: The ways to secure an SMTP connection (``PIPELINE_SMTP_SECURITY``).
SMTP_SECURITY = ("none", "starttls", "ssl")

#: The RabbitMQ queue types pipeline declares (``PIPELINE_QUEUE_TYPE``).
QUEUE_TYPES = ("classic", "quorum")
#: The storage of the classic queues pipeline creates (``PIPELINE_CLASSIC_QUEUE_VERSION``): the
#: second version, or none named (the server's default, or a policy's ``queue-version``).
CLASSIC_QUEUE_VERSIONS = ("2", "server")

#: The highest ``x-max-priority`` RabbitMQ accepts (it advises 10 or less).
MAX_QUEUE_PRIORITY = 255

#: The largest value of a setting in seconds (about 31 years); a setting in milliseconds may be
#: 1,000 times more, and a count of retries or recipients as large. Past about 292 years a
#: timeout no longer fits a socket's or a lock's wait, and a key's lifetime no Redis command.
MAX_SECONDS = 10**9
MAX_MILLISECONDS = 1_000 * MAX_SECONDS
#: Connections a worker process keeps at most (each an open socket).
MAX_CONNECTIONS = 10_000

#: The password part of a URL's netloc: after ``scheme://user:`` up to the last ``@`` of the netloc.
_PASSWORD_IN_URL = re.compile(r"(://[^:/@;]*:)[^/;]*@")

#: What a namespace may be: it starts every Redis key, so nothing that could collide with a separator.
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclasses.dataclass(frozen=True, eq=False)
class Settings:
    """The settings of one process, validated when created.

    Build it with :meth:`from_env`; each field's docstring-comment gives its unit.
    """

    #: RabbitMQ URL (``amqp://user:password@host:port/vhost``, ``amqps://`` for TLS); ``;``
    #: separates the nodes of a cluster, tried in turn.
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: CA bundle that signs RabbitMQ's certificate (``amqps``); the system's CAs when unset.
    broker_ca_file: Path | None = None
    #: Seconds a publish waits while RabbitMQ blocks publishers (a memory or disk alarm) before
    #: it gives up; a ``blocked_connection_timeout`` in the broker URL overrides it.
    broker_blocked_timeout: float = 10.0
    #: RabbitMQ management API URL (``http://user:password@host:15672``); unset: the first broker
    #: node's host and credentials on port 15672.
    management_url: str | None = None
    #: Redis URL of the job records: ``redis://``, ``rediss://`` (TLS), ``unix://``, or
    #: ``redis+sentinel://host:26379,host2:26379/service/db`` (see :mod:`pipeline.store.redis_url`).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: CA bundle that signs the Redis server's certificate (``rediss``); the system's CAs when unset.
    redis_ca_file: Path | None = None
    #: Password of the Redis sentinels, when they ask for one of their own.
    redis_sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    #: Prefix of every Redis key and channel, so that two deployments can share one Redis.
    namespace: str = "pipeline"
    #: Seconds a Redis connection may take to open.
    redis_connect_timeout: float = 2.0
    #: Seconds Redis may take to answer a command (blocking waits are cut into shorter calls).
    redis_socket_timeout: float = 5.0
    #: Seconds a job record lives after its last change.
    result_ttl: int = 86_400
    #: Seconds a send's idempotency key holds: a second send with it publishes nothing.
    idempotency_window: int = 86_400
    #: Seconds after which a key whose job never reached ``QUEUED`` (its sender died between
    #: taking the key and publishing) is taken over by a later send.
    idempotency_takeover: float = 10.0
    #: Seconds a worker told to stop (SIGTERM) gives its running jobs: near the end it asks them
    #: to stop, and at the end it hands back what still runs and exits. Keep it below the
    #: platform's own grace period (a container's 30 s by default, with the SIGKILL after it).
    shutdown_grace: float = 25.0
    #: The web dashboard's bearer token (also taken as the password of HTTP basic auth, any user).
    web_token: str | None = dataclasses.field(default=None, repr=False)
    #: The web dashboard's user and password (HTTP basic auth), instead of or beside the token.
    web_user: str | None = None
    web_password: str | None = dataclasses.field(default=None, repr=False)
    #: Whether the standalone dashboard offers write actions (revoke, retry, requeue, purge).
    web_writes: bool = False
    #: ``classic`` queues (one node's) or ``quorum`` queues (replicated across a cluster).
    queue_type: str = "classic"
    #: The storage of the classic queues pipeline creates: ``2`` (its second version, fastest
    #: under a backlog) or ``server`` (none named: the server's default, or a policy's).
    classic_queue_version: str = "2"
    #: Deliveries of one message a quorum queue makes before it dead-letters it (a job that
    #: kills its worker every time would otherwise be delivered forever).
    delivery_limit: int = 20
    #: ``x-max-priority`` of each queue, as ``queue=max,...``; a queue not listed gets none.
    queue_priorities: dict[str, int] = dataclasses.field(default_factory=lambda: {DEFAULT_QUEUE: 10, SLOW_QUEUE: 5})
    #: Milliseconds a job runs before its ``STARTED`` is written; a quicker job's start is
    #: written with its end (0: write every start at once).
    started_after: int = 50
    #: Wait for RabbitMQ's publisher confirm on every send.
    confirm_delivery: bool = True
    #: The name of this service: each message's AMQP ``app_id`` and part of its connections' names.
    service_name: str = "pipeline"
    #: Times a failing job is retried before it is failed and dead-lettered.
    max_retries: int = 5
    #: Milliseconds before the first retry; doubles with every attempt.
    retry_min_backoff: int = 15_000
    #: Milliseconds a retry waits at most; any length (the retry waits in Redis, not in a worker).
    retry_max_backoff: int = 600_000

    #: SMTP server host.
    smtp_host: str = "127.0.0.1"
    #: SMTP server port (1025: a local catcher such as Mailpit; 587 with STARTTLS; 465 with SSL).
    smtp_port: int = 1025
    #: SMTP user name; no login when unset.
    smtp_user: str | None = None
    #: SMTP password; never printed.
    smtp_password: str | None = dataclasses.field(default=None, repr=False)
    #: ``none``, ``starttls`` (upgrade a plain connection) or ``ssl`` (implicit TLS).
    smtp_security: str = "none"
    #: CA bundle that signs the SMTP server's certificate; the system's CAs when unset.
    smtp_ca_file: Path | None = None
    #: Seconds an SMTP connection or command may take.
    smtp_timeout: float = 10.0
    #: Keep each worker thread's SMTP connection open across mails.
    smtp_reuse_connection: bool = True
    #: SMTP connections a worker process keeps open at most, shared by its threads; a mail waits
    #: for one while all are busy.
    smtp_max_connections: int = 100
    #: Recipients of one SMTP transaction at most: a mail to more goes in several (RFC 5321
    #: has every server take 100; some take more).
    smtp_max_recipients: int = 100
    #: The From of every mail, ``Name <address>``.
    mail_sender: str = "Shop <noreply@example.com>"
    #: Put before every subject, e.g. ``[Shop] ``.
    mail_subject_prefix: str = ""
    #: Times a mail that failed for a passing reason (4xx, connection) is retried.
    mail_max_retries: int = 5
    #: Mails per window for the whole deployment (``50/s``, ``3000/min``, ``100000/h``); unset: none.
    mail_rate_limit: str | None = None
    #: Template folders searched before the built-in ones, separated by ``:``.
    template_dirs: tuple[Path, ...] = ()

    #: Where finished export files go (relative paths from the worker's working folder).
    export_dir: Path = Path("exports")
    #: URL the export folder is served at; exports are then linked as ``<base>/<file>``, else ``file://``.
    export_base_url: str | None = None
    #: The only folder export files of orders (``file=...``) are read from.
    import_dir: Path = Path("imports")
    #: The shop's order source plug-in, ``package.module:function``, for ``filter=...`` exports.
    order_source: str | None = None
    #: Seconds an export may run; must stay below RabbitMQ's consumer timeout.
    export_time_limit: int = 1_500
    #: Seconds an identical export request gets the earlier file instead of a new one (0: never).
    export_reuse_window: int = 10_800
    #: Milliseconds RabbitMQ lets a delivery stay unacknowledged (its ``consumer_timeout``).
    rabbitmq_consumer_timeout: int = 1_800_000
    #: Port a worker serves Prometheus metrics on (``/metrics``); none when unset.
    metrics_port: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``PIPELINE_*`` variables, defaulting every one not set.

        Parameters:
          environ: The variables to read; ``os.environ`` when omitted.

        Raises:
          SettingsError: A variable's value has the wrong type or is out of range.
        """
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            variable = ENV_PREFIX + field.name.upper()
            raw = environ.get(variable)
            if raw is not None:
                values[field.name] = _parse(variable, raw, hints[field.name])
        return cls(**values)

    def __post_init__(self) -> None:
        _check_url("PIPELINE_BROKER_URL", self.broker_url, ("amqp", "amqps"))
        _check_url(
            "PIPELINE_REDIS_URL", self.redis_url, ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
        )
        if self.management_url is not None:
            _check_url("PIPELINE_MANAGEMENT_URL", self.management_url, ("http", "https"))
        _check_minimum("PIPELINE_RESULT_TTL", self.result_ttl, 1)
        _check_minimum("PIPELINE_IDEMPOTENCY_WINDOW", self.idempotency_window, 1)
        _check_positive("PIPELINE_IDEMPOTENCY_TAKEOVER", self.idempotency_takeover)
        _check_positive("PIPELINE_SHUTDOWN_GRACE", self.shutdown_grace)
        if (self.web_user is None) != (self.web_password is None):
            raise SettingsError(
                "PIPELINE_WEB_USER" if self.web_user is None else "PIPELINE_WEB_PASSWORD",
                "",
                "PIPELINE_WEB_USER and PIPELINE_WEB_PASSWORD go together",
            )
        if not NAMESPACE.fullmatch(self.namespace):
            raise SettingsError(
                "PIPELINE_NAMESPACE", self.namespace, "expected letters, digits, '_', '-' or '.' (at most 64)"
            )
        if not is_short_text(self.service_name):
            raise SettingsError("PIPELINE_SERVICE_NAME", self.service_name, f"expected {SHORT_TEXT} (the AMQP app_id)")
        _check_positive("PIPELINE_BROKER_BLOCKED_TIMEOUT", self.broker_blocked_timeout)
        _check_positive("PIPELINE_REDIS_CONNECT_TIMEOUT", self.redis_connect_timeout)
        _check_positive("PIPELINE_REDIS_SOCKET_TIMEOUT", self.redis_socket_timeout)
        _check_minimum("PIPELINE_STARTED_AFTER", self.started_after, 0, MAX_MILLISECONDS)
        _check_minimum("PIPELINE_MAX_RETRIES", self.max_retries, 0)
        _check_minimum("PIPELINE_RETRY_MIN_BACKOFF", self.retry_min_backoff, 1, MAX_MILLISECONDS)
        _check_minimum("PIPELINE_RETRY_MAX_BACKOFF", self.retry_max_backoff, self.retry_min_backoff, MAX_MILLISECONDS)
        _check_minimum("PIPELINE_SMTP_PORT", self.smtp_port, 1, 65_535)
        _check_minimum("PIPELINE_MAIL_MAX_RETRIES", self.mail_max_retries, 0)
        if self.mail_rate_limit is not None:
            try:
                parse_rate(self.mail_rate_limit)
            except ValueError as exc:
                raise SettingsError("PIPELINE_MAIL_RATE_LIMIT", self.mail_rate_limit, str(exc)) from None
        _check_positive("PIPELINE_SMTP_TIMEOUT", self.smtp_timeout)
        _check_minimum("PIPELINE_SMTP_MAX_CONNECTIONS", self.smtp_max_connections, 1, MAX_CONNECTIONS)
        _check_minimum("PIPELINE_SMTP_MAX_RECIPIENTS", self.smtp_max_recipients, 1)
        _check_sender(self.mail_sender)
        if first_header_breaker(self.mail_subject_prefix) is not None:
            raise SettingsError(
                "PIPELINE_MAIL_SUBJECT_PREFIX", self.mail_subject_prefix, "holds a line break or control character"
            )
        if self.smtp_security not in SMTP_SECURITY:
            raise SettingsError(
                "PIPELINE_SMTP_SECURITY", self.smtp_security, f"expected one of {', '.join(SMTP_SECURITY)}"
            )
        if self.queue_type not in QUEUE_TYPES:
            raise SettingsError("PIPELINE_QUEUE_TYPE", self.queue_type, f"expected one of {', '.join(QUEUE_TYPES)}")
        if self.classic_queue_version not in CLASSIC_QUEUE_VERSIONS:
            raise SettingsError(
                "PIPELINE_CLASSIC_QUEUE_VERSION",
                self.classic_queue_version,
                f"expected one of {', '.join(CLASSIC_QUEUE_VERSIONS)}",
            )
        _check_minimum("PIPELINE_DELIVERY_LIMIT", self.delivery_limit, 1)
        _check_minimum("PIPELINE_EXPORT_TIME_LIMIT", self.export_time_limit, 1)
        if self.metrics_port is not None and not 0 < self.metrics_port < 65_536:
            raise SettingsError("PIPELINE_METRICS_PORT", str(self.metrics_port), "a port is 1 to 65535")
        _check_minimum("PIPELINE_EXPORT_REUSE_WINDOW", self.export_reuse_window, 0)
        _check_minimum("PIPELINE_RABBITMQ_CONSUMER_TIMEOUT", self.rabbitmq_consumer_timeout, 1, MAX_MILLISECONDS)
        # Every delivery a worker holds unacked (a running export, the prefetch behind it) must
        # be acked before RabbitMQ's consumer timeout, or RabbitMQ closes the channel and
        # redelivers them all: an export that always overruns would then loop forever.
        if self.export_time_limit * 1000 >= self.rabbitmq_consumer_timeout:
            raise SettingsError(
                "PIPELINE_EXPORT_TIME_LIMIT",
                str(self.export_time_limit),
                f"must be below RabbitMQ's consumer timeout ({self.rabbitmq_consumer_timeout} ms, "
                "PIPELINE_RABBITMQ_CONSUMER_TIMEOUT): raise consumer_timeout in the RabbitMQ server's "
                "config and PIPELINE_RABBITMQ_CONSUMER_TIMEOUT with it, or lower the time limit",
            )
        for queue, priority in self.queue_priorities.items():
            if not 0 <= priority <= MAX_QUEUE_PRIORITY:
                raise SettingsError(
                    "PIPELINE_QUEUE_PRIORITIES",
                    f"{queue}={priority}",
                    f"a queue's max priority must be between 0 and {MAX_QUEUE_PRIORITY}",
                )

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            if field.repr:
                value = getattr(self, field.name)
                masked = field.name.endswith("_url") and isinstance(value, str)
                shown.append(f"{field.name}={mask_url(value) if masked else value!r}")
        return f"Settings({', '.join(shown)})"

    def max_priority(self, queue_name: str) -> int:
        """The ``x-max-priority`` queue ``queue_name`` is declared with (0: no priorities)."""
        return self.queue_priorities.get(queue_name, 0)


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use and kept."""
    return Settings.from_env()


class _ProcessSettings:
    """Stands for the process's settings, read (see :func:`get_settings`) when one of them is
    first used: what is built from it at import (the broker, its middleware) reads nothing, and
    a bad setting is reported, by its variable's name, when a send or a worker starts.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(get_settings(), name)

    def __repr__(self) -> str:
        return "<the process's settings>"


#: The process's settings, read on first use; pass it where a ``Settings`` is built into
#: something that lives from import on.
PROCESS_SETTINGS: Settings = typing.cast("Settings", _ProcessSettings())


#: A rate: a count, then per second, minute or hour.
RATE = re.compile(r"\s*([1-9][0-9]{0,8})\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*")
_RATE_WINDOWS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> tuple[int, int]:
    """A rate such as ``50/s`` or ``3000/min`` as (count, window in seconds).

    Raises:
      ValueError: It is not of that form.
    """
    found = RATE.fullmatch(text)
    if found is None:
        raise ValueError("expected a count per s, min or h, such as 50/s or 3000/min")
    return int(found.group(1)), _RATE_WINDOWS[found.group(2)]


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and error messages.

    Works on each ``;``-separated node and on a netloc of several hosts (a Sentinel URL).
    """
    return _PASSWORD_IN_URL.sub(r"\1***@", url)


def _parse(variable: str, raw: str, kind: object) -> object:
    """Turn the text of ``variable`` into a value of the annotated ``kind``."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw.strip() == "":
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
        origin = typing.get_origin(kind)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(variable, raw, "expected a boolean (true/false, 1/0, yes/no, on/off)")
    if kind is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise SettingsError(variable, raw, "expected a whole number") from None
    if kind is float:
        try:
            number = float(raw.strip())
        except ValueError:
            raise SettingsError(variable, raw, "expected a number") from None
        if not math.isfinite(number):
            raise SettingsError(variable, raw, "expected a finite number")
        return number
    if kind is Path:
        return Path(raw).expanduser()
    if origin is tuple:
        return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())
    if origin is dict:
        return _parse_table(variable, raw)
    return raw


def _parse_table(variable: str, raw: str) -> dict[str, int]:
    """Parse ``name=number,name=number`` into a dict."""
    table: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, number = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SettingsError(variable, raw, f"{item!r} is not of the form queue=number")
        if name in table:
            raise SettingsError(variable, raw, f"names queue {name!r} twice")
        try:
            table[name] = int(number)
        except ValueError:
            raise SettingsError(variable, raw, f"{number.strip()!r} is not a whole number") from None
    return table


def _check_url(variable: str, url: str, schemes: tuple[str, ...]) -> None:
    for part in url.split(";"):
        scheme = urlsplit(part).scheme
        if scheme not in schemes:
            raise SettingsError(
                variable, mask_url(url), f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )


def _check_minimum(variable: str, value: int, minimum: int, maximum: int = MAX_SECONDS) -> None:
    if value < minimum:
        raise SettingsError(variable, str(value), f"must be at least {minimum}")
    _check_maximum(variable, value, maximum)


def _check_positive(variable: str, value: float, maximum: int = MAX_SECONDS) -> None:
    if value <= 0:
        raise SettingsError(variable, str(value), "must be more than 0")
    _check_maximum(variable, value, maximum)


def _check_maximum(variable: str, value: float, maximum: int) -> None:
    if value > maximum:
        raise SettingsError(variable, shown(value), f"must be at most {maximum:,}")


def _check_sender(sender: str) -> None:
    """The sender must be exactly one address, ``Name <local@domain>`` or ``local@domain``."""
    if first_header_breaker(sender) is not None:
        raise SettingsError("PIPELINE_MAIL_SENDER", sender, "holds a line break or control character")
    parsed = getaddresses([sender])
    if len(parsed) != 1:
        raise SettingsError("PIPELINE_MAIL_SENDER", sender, f"must be one address, not {len(parsed)}")
    local, at, domain = parsed[0][1].rpartition("@")
    if not (local and at and "." in domain) or any(c.isspace() for c in parsed[0][1]):
        raise SettingsError("PIPELINE_MAIL_SENDER", sender, "is not an address of the form Name <local@domain>")

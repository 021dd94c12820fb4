"""The RabbitMQ broker of pipeline, built from the settings and set as Dramatiq's global broker.

Importing this module creates the broker (nothing connects until the first send or consume)
and calls ``dramatiq.set_broker``, so it must be imported before any actor is declared;
:mod:`pipeline.actors` does that.

What it adds to Dramatiq's ``RabbitmqBroker``:

- each queue gets its own ``x-max-priority`` from ``PIPELINE_QUEUE_PRIORITIES``;
- publisher confirms are on by default, so a send that returns is a message RabbitMQ has taken;
- :meth:`PipelineBroker.enqueue_many` publishes a batch in one AMQP transaction: one commit,
  one disk sync, for the whole batch;
- pika's failures reach callers as :class:`~pipeline.errors.BrokerUnavailable` naming the URL
  (password masked), and a queue that exists with other arguments as
  :class:`~pipeline.errors.QueueMismatch`.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, MAX_ENQUEUE_ATTEMPTS, RabbitmqBroker
from dramatiq.common import xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import MiddlewareError, Retries, default_middleware

from pipeline.errors import BrokerUnavailable, PipelineError, PublishOutcomeUnknown, QueueMismatch
from pipeline.jobs.amqp_writes import buffer_acks, join_writes
from pipeline.jobs.checks import MessageChecks, refusals_raised
from pipeline.jobs.consumer_timeout import ConsumerTimeoutCheck
from pipeline.jobs.finished import FinishedCheck, checks_finished
from pipeline.jobs.hooks import HookTable
from pipeline.jobs.logs import WorkerLogs
from pipeline.jobs.metrics import metrics_middleware
from pipeline.jobs.prefetch import LongJobPrefetch
from pipeline.jobs.priorities import MessagePriorities
from pipeline.jobs.properties import connection_name, message_properties
from pipeline.jobs.queue_types import QUORUM, QueueTypeReport, queue_type_arguments
from pipeline.jobs.recording import JobRecords
from pipeline.jobs.retries import PipelineRetries
from pipeline.settings import Settings, get_settings, mask_url
from pipeline.store.records import get_store

#: What pika raises when a publish cannot be made on the connection or channel at hand.
_PUBLISH_FAILURES = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)
#: AMQP reply code RabbitMQ closes a channel with when a queue exists with other arguments.
PRECONDITION_FAILED = 406


class PipelineBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with per-queue priorities, batch sends and clear errors.

    Parameters:
      settings: Gives the URL, the confirm mode and each queue's ``x-max-priority``.
      middleware: Passed on to Dramatiq; see :func:`build_broker` for pipeline's list.
    """

    def __init__(self, settings: Settings, middleware: list[dramatiq.Middleware] | None = None) -> None:
        self.settings = settings
        self._hooks = HookTable()
        super().__init__(url=settings.broker_url, confirm_delivery=settings.confirm_delivery, middleware=middleware)
        self._publishing = threading.local()
        for node in self._nodes():
            if node.ssl_options is not None:
                # pika's amqps default checks the certificate but names no host to check it
                # against, which fails every connection: name the node's, with the CA bundle.
                context = ssl.create_default_context(cafile=str(settings.broker_ca_file or "") or None)
                node.ssl_options = pika.SSLOptions(context, server_hostname=node.host)

    def add_middleware(self, middleware: dramatiq.Middleware, **where: Any) -> None:
        """Add ``middleware`` as Dramatiq does (``before=`` or ``after=`` a class)."""
        super().add_middleware(middleware, **where)
        self._hooks.clear()

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's ``emit_before``, calling only the middleware that act on the signal."""
        signal = "before_" + signal
        for middleware in self._hooks.acting(self.middleware, signal):
            try:
                getattr(middleware, signal)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", signal, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's ``emit_after``, calling only the middleware that act on the signal."""
        signal = "after_" + signal
        for middleware in reversed(self._hooks.acting(self.middleware, signal)):
            try:
                getattr(middleware, signal)(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", signal, middleware, exc_info=True)

    def _nodes(self) -> list[Any]:
        return self._parameters if isinstance(self._parameters, list) else [self._parameters]

    @property
    def parameters(self) -> Any:
        """The connection parameters, named for this process as a connection opens."""
        name = connection_name(self.settings.service_name)
        for node in self._nodes():
            node.client_properties = {"connection_name": name}
        return self._parameters

    @parameters.setter
    def parameters(self, value: Any) -> None:
        self._parameters = value

    @property
    def connection(self) -> Any:
        """This thread's connection (Dramatiq's), writing each message's frames at once."""
        connection = getattr(self.state, "connection", None)
        if connection is None:
            connection = join_writes(RabbitmqBroker.connection.fget(self))  # type: ignore[attr-defined]
        return connection

    @connection.deleter
    def connection(self) -> None:
        RabbitmqBroker.connection.fdel(self)  # type: ignore[attr-defined]

    @property
    def channel(self) -> Any:
        """This thread's channel (Dramatiq's), publishing with pipeline's properties and noting
        when a publish on it broke midway.
        """
        channel = RabbitmqBroker.channel.fget(self)  # type: ignore[attr-defined]
        return _WatchedChannel(channel, self._publishing, self.settings.service_name)

    @channel.deleter
    def channel(self) -> None:
        RabbitmqBroker.channel.fdel(self)  # type: ignore[attr-defined]

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments = super()._build_queue_arguments(queue_name)
        arguments.pop("x-max-priority", None)
        return arguments | queue_type_arguments(self.settings, queue_name)

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self._declare_checked(queue_name, self._declare_xq_of_type)

    def _declare_xq_of_type(self, queue_name: str) -> Any:
        if self.settings.queue_type != QUORUM:
            return super()._declare_xq_queue(queue_name)
        arguments = {"x-message-ttl": DEAD_MESSAGE_TTL, "x-queue-type": QUORUM}
        return self.channel.queue_declare(queue=xq_name(queue_name), durable=True, arguments=arguments)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
        """Dramatiq's consumer of ``queue_name``, which also asks, without waiting, whether each
        delivery's job already finished (see :mod:`pipeline.jobs.finished`), and sends the acks
        of jobs that finished together (see :mod:`pipeline.jobs.amqp_writes`).
        """
        consumer = buffer_acks(super().consume(queue_name, prefetch, timeout))
        if checks_finished(queue_name):
            return FinishedCheck(consumer, get_store(self.settings))
        return consumer

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare_checked(queue_name, super()._declare_queue)

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare_checked(queue_name, super()._declare_dq_queue)

    def _declare_checked(self, queue_name: str, declare: Any) -> Any:
        try:
            return declare(queue_name)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            del self.channel
            raise QueueMismatch(
                f"queue {queue_name!r} already exists in RabbitMQ with other arguments than "
                f"{self._build_queue_arguments(queue_name)} ({exc.reply_text}); a queue's arguments are "
                "fixed when it is created: delete it (and its .DQ and .XQ) once it is drained, or set "
                "PIPELINE_QUEUE_TYPE, PIPELINE_QUEUE_PRIORITIES and PIPELINE_DELIVERY_LIMIT to what it was "
                "declared with"
            ) from exc

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"RabbitMQ at {mask_url(self.settings.broker_url)} did not take the message: {exc}")

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """Publish ``message`` (after ``delay`` milliseconds); see Dramatiq's ``enqueue``.

        Raises:
          BrokerUnavailable: RabbitMQ could not be reached or refused the message after the
            broker's retries: it does not have it.
          PublishOutcomeUnknown: The connection broke while the message was published, and the
            retries failed too: RabbitMQ may have it.
          InvalidPriority: The message's priority does not fit its queue.
        """
        self._publishing.broke = False
        self._publishing.message = message
        try:
            with refusals_raised():
                return super().enqueue(message, delay=delay)
        # pika lets a TLS failure (an unknown CA, a wrong host name) through as an OSError.
        except (ConnectionClosed, OSError) as exc:
            if self._publishing.broke:
                # A publish broke after it may have reached RabbitMQ: the record stays, since a
                # worker may yet run the job, and the caller is told the outcome is unknown.
                self.emit_after("enqueue_outcome_unknown", message)
                raise PublishOutcomeUnknown(
                    f"RabbitMQ at {mask_url(self.settings.broker_url)} may or may not have taken message "
                    f"{message.message_id}: the connection broke while it was published ({exc}); look at "
                    "its AsyncResult before sending it again",
                    message.message_id,
                ) from exc
            self.emit_after("enqueue_failure", message)
            raise self._unavailable(exc) from exc
        finally:
            self._publishing.message = None

    def _emit_batch(self, stage: str, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Tell every middleware a batch is ``before`` or ``after`` its enqueue.

        A middleware's ``<stage>_enqueue_batch`` hook is called once where it defines one, its
        ``<stage>_enqueue`` per message where it does not. As Dramatiq's ``emit_before`` and
        ``emit_after`` do: forward order before, reverse after; a ``MiddlewareError`` raised
        before the publish reaches the sender, any other failure is logged.
        """
        ordered = self.middleware if stage == "before" else list(reversed(self.middleware))
        for middleware in ordered:
            batch_hook = getattr(middleware, f"{stage}_enqueue_batch", None)
            try:
                if batch_hook is not None:
                    batch_hook(self, messages)
                else:
                    hook = getattr(middleware, f"{stage}_enqueue")
                    for message in messages:
                        hook(self, message, None)
            except MiddlewareError:
                if stage == "before":
                    raise
                self.logger.critical("Unexpected failure in %s_enqueue of %r.", stage, middleware, exc_info=True)
            except Exception:
                self.logger.critical("Unexpected failure in %s_enqueue of %r.", stage, middleware, exc_info=True)

    def enqueue_many(self, messages: Sequence[dramatiq.Message[Any]]) -> list[dramatiq.Message[Any]]:
        """Publish messages of one queue in one AMQP transaction.

        RabbitMQ answers the commit once every message of the batch is routed and, the queues
        being durable and the messages persistent, written to disk: a return means all were
        taken, at the cost of one confirmation for the whole batch. A batch that fails is
        published again whole; a message RabbitMQ never saw is not recorded.

        Middleware see ``before_enqueue_batch`` and ``after_enqueue_batch`` once where they
        define them, ``before_enqueue`` and ``after_enqueue`` per message where they do not.

        Parameters:
          messages: Messages built with ``actor.message_with_options``, all for one queue.

        Returns:
          The messages, as published.

        Raises:
          BrokerUnavailable: RabbitMQ could not be reached or refused the commit.
          InvalidPriority: A message's priority does not fit the queue.
        """
        if not messages:
            return []
        queue_names = {m.queue_name for m in messages}
        if len(queue_names) != 1:
            raise PipelineError(f"a batch goes to one queue, not to {sorted(queue_names)}")
        (queue_name,) = queue_names
        with refusals_raised():
            self._emit_batch("before", messages)
        bodies = [(m.encode(), message_properties(m, self.settings.service_name)) for m in messages]
        for attempt in range(1, MAX_ENQUEUE_ATTEMPTS + 1):
            try:
                # Declared again for every batch: a transaction has no mandatory-flag check,
                # so a queue deleted behind the broker's back would swallow the batch.
                self.queues_pending.add(queue_name)
                self.declare_queue(queue_name, ensure=True)
                self._publish_transaction(queue_name, bodies)
                break
            except (*_PUBLISH_FAILURES, ConnectionClosed, OSError) as exc:
                del self.connection
                if attempt == MAX_ENQUEUE_ATTEMPTS:
                    raise self._unavailable(exc) from exc
        self._emit_batch("after", messages)
        return list(messages)

    def _publish_transaction(self, queue_name: str, bodies: Sequence[tuple[bytes, pika.BasicProperties]]) -> None:
        channel = self.connection.channel()
        try:
            channel.tx_select()
            for body, properties in bodies:
                channel.basic_publish(exchange="", routing_key=queue_name, body=body, properties=properties)
            channel.tx_commit()
        finally:
            if channel.is_open:
                channel.close()


class _WatchedChannel:
    """A channel that publishes ``state.message`` with pipeline's properties (Dramatiq's carry
    only the priority), and notes in ``state.broke`` when the connection failed during a
    publish, after which RabbitMQ may or may not have the message.
    """

    def __init__(self, channel: Any, state: threading.local, app_id: str) -> None:
        self._channel = channel
        self._state = state
        self._app_id = app_id

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's publish, watched."""
        message = getattr(self._state, "message", None)
        if message is not None:
            kwargs["properties"] = message_properties(message, self._app_id)
        try:
            self._channel.basic_publish(*args, **kwargs)
        except pika.exceptions.AMQPConnectionError:
            self._state.broke = True
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def build_broker(settings: Settings) -> PipelineBroker:
    """A broker for ``settings`` with Dramatiq's default middleware plus pipeline's.

    The middleware, in order: AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines,
    MessageChecks, MessagePriorities, JobRecords, LongJobPrefetch, ConsumerTimeoutCheck,
    QueueTypeReport, WorkerLogs, PipelineRetries (in place of Retries, with the retry count and backoff from the
    settings); and Dramatiq's Prometheus last when ``PIPELINE_METRICS_PORT`` is set.
    """
    retries = PipelineRetries(
        max_retries=settings.max_retries,
        min_backoff=settings.retry_min_backoff,
        max_backoff=settings.retry_max_backoff,
    )
    middleware = [retries if m is Retries else m() for m in default_middleware]
    broker = PipelineBroker(settings, middleware=middleware)
    extras = (
        MessageChecks(),
        MessagePriorities(settings),
        JobRecords(get_store(settings)),
        LongJobPrefetch(),
        ConsumerTimeoutCheck(settings),
        QueueTypeReport(settings),
        WorkerLogs(mask_url(settings.broker_url)),
    )
    for extra in extras:
        broker.add_middleware(extra, before=PipelineRetries)
    for metrics in metrics_middleware(settings):
        broker.add_middleware(metrics)
    return broker


#: The process's broker, set as Dramatiq's global broker on import.
broker = build_broker(get_settings())
dramatiq.set_broker(broker)

"""The RabbitMQ broker of pipeline, built from the settings and set as Dramatiq's global broker.

Importing this module builds nothing: :func:`get_broker` builds the process's broker on first
use and sets it as Dramatiq's, which :mod:`pipeline.actors` does before it declares an actor
(``pipeline.broker.broker`` is the same broker). Building it reads no setting and opens no
connection: the settings are read when a send or a worker first needs them, and a bad one is
reported then, by its variable's name.

What it adds to Dramatiq's ``RabbitmqBroker``:

- each queue gets its own ``x-max-priority`` from ``PIPELINE_QUEUE_PRIORITIES``;
- publisher confirms are on by default, so a send that returns is a message RabbitMQ has taken;
- :meth:`PipelineBroker.enqueue_many` publishes a batch in one AMQP transaction: one commit,
  one disk sync, for the whole batch;
- the connection of a thread that sent is closed once the thread ended, where Dramatiq keeps it
  until the broker closes, and one idle for half a heartbeat is replaced before the next send,
  where pika would meet it closed by RabbitMQ (see :mod:`pipeline.jobs.thread_connections`);
- pika's failures reach callers as :class:`~pipeline.errors.BrokerUnavailable` naming the URL
  (password masked), a queue that exists with other arguments as
  :class:`~pipeline.errors.QueueMismatch`, and a message over the server's size limit as
  :class:`~pipeline.errors.MessageTooLarge`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import ssl
from collections.abc import Sequence
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, MAX_DECLARE_ATTEMPTS, MAX_ENQUEUE_ATTEMPTS, RabbitmqBroker
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware, MiddlewareError, Retries, default_middleware
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from pipeline.errors import (
    BrokerUnavailable,
    MessageTooLarge,
    PipelineError,
    PublishOutcomeUnknown,
    QueueMismatch,
    ResultBackendUnavailable,
)
from pipeline.jobs.acks import AcksTogether, LoopThreadCallbacks, UnsentWrites
from pipeline.jobs.boot_checks import SettingsAtStart
from pipeline.jobs.checks import MessageChecks, check_delay, check_fields, eta_delay, is_retry, refusals_raised
from pipeline.jobs.consumer_timeout import ConsumerTimeoutCheck
from pipeline.jobs.consumers import DeadLetterQueueKept
from pipeline.jobs.finished import FinishedCheck, ReceivedStates, checks_finished
from pipeline.jobs.holds import run_limit
from pipeline.jobs.logs import WorkerLogs
from pipeline.jobs.mail_rate import MailRateLimit
from pipeline.jobs.metrics import WorkerMetrics
from pipeline.jobs.options import ETA_OPTION, RETRY_DUE_OPTION
from pipeline.jobs.pika_adapter import buffer_acks, publish_together
from pipeline.jobs.prefetch import PrefetchFromHolds
from pipeline.jobs.priorities import MessagePriorities
from pipeline.jobs.properties import connection_name, message_properties
from pipeline.jobs.queue_types import QueueTypeReport, queue_type_arguments, storage_arguments, without_storage_version
from pipeline.jobs.recording import JobRecords
from pipeline.jobs.retries import PipelineRetries
from pipeline.jobs.scheduled import DelayedToSchedule, ScheduledPublisher
from pipeline.jobs.shutdown import GracefulShutdown, Quiet, QuietConsumer
from pipeline.jobs.thread_connections import ThreadConnections
from pipeline.settings import PROCESS_SETTINGS, Settings, mask_url
from pipeline.store.records import get_store
from pipeline.store.schedule import Schedule

#: What pika raises when a connection cannot be opened, or a publish made on the connection or
#: channel at hand. pika's blocking connection lets a handshake that timed out (a node that takes
#: the TCP connection and says nothing: frozen, or overloaded) through as a connector error,
#: which is not one of its AMQP errors.
AMQP_FAILURES = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, AMQPConnectorException)
#: Seconds of RabbitMQ's heartbeat when the client proposes none (the server's default).
RABBITMQ_HEARTBEAT = 60.0
#: AMQP reply code RabbitMQ closes a channel with when a queue exists with other arguments.
PRECONDITION_FAILED = 406


class PipelineBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with per-queue priorities, batch sends and clear errors.

    It builds on Dramatiq's public members only: it declares queues in :meth:`declare_queue`
    and publishes in :meth:`enqueue`, each overridden as a whole, on the thread's
    ``channel``; everything else (connections, consumers, middleware dispatch) is Dramatiq's.

    Parameters:
      settings: Gives the URL, the confirm mode and each queue's ``x-max-priority``.
      middleware: Passed on to Dramatiq; see :func:`build_broker` for pipeline's list.
      received: The states the consumers ask for their deliveries, shared with the
        job-records middleware (see :class:`~pipeline.jobs.finished.ReceivedStates`).
      quiet: Whether the worker takes deliveries, shared with the shutdown middleware (see
        :mod:`pipeline.jobs.shutdown`).
      unsent: The final record writes whose acks wait for them to leave, shared with the
        job-records middleware (see :class:`~pipeline.jobs.acks.UnsentWrites`).
    """

    def __init__(
        self,
        settings: Settings = PROCESS_SETTINGS,
        middleware: list[dramatiq.Middleware] | None = None,
        received: ReceivedStates | None = None,
        quiet: Quiet | None = None,
        unsent: UnsentWrites | None = None,
    ) -> None:
        self.settings = settings
        self.received = received if received is not None else ReceivedStates(get_store(settings))
        self.quiet = quiet if quiet is not None else Quiet()
        self.unsent = unsent if unsent is not None else UnsentWrites()
        self._node_parameters: Any = None
        # Queues found without the storage version pipeline names, and the arguments they have.
        self._declared: dict[str, dict[str, Any]] = {}
        # The URL and the confirm mode are the settings', read when a connection first opens.
        super().__init__(middleware=middleware)
        self.thread_connections = ThreadConnections(self, self._idle_limit)

    @property
    def confirm_delivery(self) -> bool:
        """Whether publishes wait for RabbitMQ's confirm (``PIPELINE_CONFIRM_DELIVERY``)."""
        return bool(self.settings.confirm_delivery)

    @confirm_delivery.setter
    def confirm_delivery(self, value: bool) -> None:
        """Dramatiq's constructor sets its default here; pipeline's comes from the settings."""

    def _nodes(self) -> list[Any]:
        if self._node_parameters is None:
            url = self.settings.broker_url
            nodes = [pika.URLParameters(node) for node in url.split(";")]
            for node in nodes:
                if node.blocked_connection_timeout is None:
                    # pika waits for ever while RabbitMQ blocks publishers (a resource alarm).
                    node.blocked_connection_timeout = self.settings.broker_blocked_timeout
                if node.ssl_options is not None:
                    # pika's amqps default checks the certificate but names no host to check it
                    # against, which fails every connection: name the node's, with the CA bundle.
                    cafile = str(self.settings.broker_ca_file or "") or None
                    node.ssl_options = pika.SSLOptions(ssl.create_default_context(cafile=cafile), node.host)
            self._node_parameters = nodes if len(nodes) > 1 else nodes[0]
        return self._node_parameters if isinstance(self._node_parameters, list) else [self._node_parameters]

    def thread_connection(self) -> pika.BlockingConnection:
        """The calling thread's connection (Dramatiq's ``connection``), for what is not a send
        (dead letters), closed once the thread has ended, as a sending thread's is (see
        :mod:`pipeline.jobs.thread_connections`). It is not replaced when it sat idle: a caller
        may hold a channel of it open from one call to the next.
        """
        connection = self.connection
        self.thread_connections.hold(connection)
        return connection

    def _idle_limit(self) -> float:
        """Seconds a thread's publishing connection may sit idle and still be sent on: half the
        heartbeat of the URL (of its shortest, for a cluster's), RabbitMQ's default where it
        names none; without heartbeats, for ever.
        """
        beats = [node.heartbeat for node in self._nodes()]
        seconds = [RABBITMQ_HEARTBEAT if beat is None or callable(beat) else float(beat) for beat in beats]
        beating = [each for each in seconds if each > 0]
        return min(beating) / 2 if beating else math.inf

    @property
    def parameters(self) -> Any:
        """The connection parameters of ``PIPELINE_BROKER_URL`` (``;`` between a cluster's
        nodes), named for this process as a connection opens.
        """
        name = connection_name(self.settings.service_name)
        for node in self._nodes():
            node.client_properties = {"connection_name": name}
        return self._node_parameters

    @parameters.setter
    def parameters(self, value: Any) -> None:
        """Dramatiq's constructor sets its default here; pipeline's come from the settings."""

    def queue_arguments(self, queue_name: str) -> dict[str, Any]:
        """The arguments ``queue_name`` and its delay queue are declared with: dead letters to
        its ``.XQ``, and its priority range (classic) or delivery limit (quorum).
        """
        canonical = q_name(queue_name)
        dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(canonical)}
        return dead_letters | queue_type_arguments(self.settings, canonical)

    def dead_letter_arguments(self) -> dict[str, Any]:
        """The arguments of a dead-letter queue: Dramatiq's message TTL, and the queue type."""
        return {"x-message-ttl": DEAD_MESSAGE_TTL} | storage_arguments(self.settings)

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        """Declare a queue as Dramatiq does, and with ``ensure`` make it, its ``.DQ`` and ``.XQ``
        on the server with pipeline's arguments.

        Raises:
          QueueMismatch: The queue exists with other arguments.
          ConnectionClosed: RabbitMQ could not be reached (``ensure`` only).
        """
        super().declare_queue(queue_name)
        canonical = q_name(queue_name)
        if not ensure or canonical not in self.queues_pending:
            return
        for attempt in range(1, MAX_DECLARE_ATTEMPTS + 1):
            try:
                self._declare_on_server(canonical)
                break
            except AMQP_FAILURES as exc:
                del self.connection
                if attempt == MAX_DECLARE_ATTEMPTS or _unanswered(exc):
                    raise ConnectionClosed(exc) from None
        self.queues_pending.discard(canonical)

    def _declare_on_server(self, queue_name: str) -> list[Any]:
        """Declare ``queue_name``, its delay and its dead-letter queue; RabbitMQ's answers."""
        arguments = self.queue_arguments(queue_name)
        return [
            self._declare_one(name, each)
            for name, each in (
                (queue_name, arguments),
                (dq_name(queue_name), arguments),
                (xq_name(queue_name), self.dead_letter_arguments()),
            )
        ]

    def _declare_one(self, name: str, arguments: dict[str, Any]) -> Any:
        """Declare queue ``name`` with ``arguments``; RabbitMQ's answer. A queue that exists
        without the storage version pipeline names is used as it is, and the arguments it was
        taken with are kept (see :meth:`declared_arguments`).

        Raises:
          QueueMismatch: The queue exists with other arguments.
        """
        try:
            answer = self._declare_as(name, arguments)
        except QueueMismatch as mismatch:
            existing = without_storage_version(arguments, mismatch.reply_text)
            if existing is None:
                raise
            answer = self._declare_as(name, existing)
            if self._declared.get(name) != existing:
                self.logger.info(
                    "Queue %r exists without the storage version pipeline creates (x-queue-version 2) and is "
                    "used as it is; if it is stored in the first version, a policy with queue-version 2 converts "
                    "it to the second (faster for persistent messages)",
                    name,
                )
            self._declared[name] = existing
            return answer
        # Created anew, or found as pipeline creates it (after an operator deleted the one found).
        self._declared.pop(name, None)
        return answer

    def _declare_as(self, name: str, arguments: dict[str, Any]) -> Any:
        """Declare queue ``name`` with ``arguments``; RabbitMQ's answer.

        Raises:
          QueueMismatch: The queue exists with other arguments.
        """
        try:
            return self.channel.queue_declare(queue=name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            del self.channel
            raise QueueMismatch(
                f"queue {name!r} already exists in RabbitMQ with other arguments than {arguments} "
                f"({exc.reply_text}); a queue's arguments are fixed when it is created: delete it (and "
                "its .DQ and .XQ) once it is drained, or set PIPELINE_QUEUE_TYPE, PIPELINE_QUEUE_PRIORITIES, "
                "PIPELINE_DELIVERY_LIMIT and PIPELINE_CLASSIC_QUEUE_VERSION to what it was declared with",
                reply_text=exc.reply_text,
            ) from exc

    def declared_arguments(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments queue ``name`` was last taken with by this broker: ``arguments`` (those
        it is created with), but those it was found with when it exists without the storage
        version pipeline names, which a declare must repeat.
        """
        return self._declared.get(name, arguments)

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """Messages ready in ``queue_name``, delayed (in its delay queue and kept in Redis until
        due) and in its dead-letter queue.
        """
        queue, delayed, dead = self._declare_on_server(q_name(queue_name))
        try:
            kept = self.schedule.count(q_name(queue_name))
        except ResultBackendUnavailable:
            kept = 0
        return queue.method.message_count, delayed.method.message_count + kept, dead.method.message_count

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
        """Dramatiq's consumer of ``queue_name``, which also asks, without waiting, whether each
        delivery's job already finished (see :mod:`pipeline.jobs.finished`), hands the acks of
        jobs that finished to its thread together and sends them together (see
        :mod:`pipeline.jobs.acks` and :mod:`pipeline.jobs.pika_adapter`), and takes no
        more deliveries once the worker is quiet (see :mod:`pipeline.jobs.shutdown`).

        A delivery due later (every one of a delay queue, and one of the queue itself with an
        ``eta``) goes into the schedule, unless it is due within a second (see
        :class:`~pipeline.jobs.scheduled.DelayedToSchedule`).

        A consumer declares its queue (its ``.DQ`` and ``.XQ``) each time it starts, a restart
        too: a queue deleted on the server while the worker ran (from the management UI, say) is
        back, as at start, rather than consumed in vain until a sender declares it. It declares
        the ``.XQ`` again before it rejects a message, which RabbitMQ would otherwise drop.
        """
        # Dramatiq's consume declares the queues still pending: every start of a consumer (a
        # restart too) makes them so.
        self.queues_pending.add(q_name(queue_name))
        # Dramatiq's RabbitMQ consumer, whose connection (which runs its acks and rejections on
        # its thread) and channel (which makes them) are plain attributes.
        rabbitmq_consumer: Any = super().consume(queue_name, prefetch, timeout)
        rabbitmq_consumer.connection = LoopThreadCallbacks(rabbitmq_consumer.connection)
        dead_letters = xq_name(q_name(queue_name))
        rabbitmq_consumer.channel = DeadLetterQueueKept(
            rabbitmq_consumer.channel,
            dead_letters,
            self.declared_arguments(dead_letters, self.dead_letter_arguments()),
        )
        consumer = buffer_acks(rabbitmq_consumer)
        store = self.received.store
        if checks_finished(queue_name):
            consumer = FinishedCheck(consumer, self.received, self.actors, run_limit(self, queue_name))
            consumer = DelayedToSchedule(consumer, self.schedule, store, self.received)
        else:
            consumer = DelayedToSchedule(consumer, self.schedule, store)
        return QuietConsumer(AcksTogether(consumer, self.unsent), self.quiet, timeout)

    def _blocked(self) -> str:
        """What a publish that timed out on a blocked connection was told, for an error."""
        waited = self._nodes()[0].blocked_connection_timeout
        return (
            f"RabbitMQ at {mask_url(self.settings.broker_url)} blocked publishers for more than {waited:g} s "
            "(a memory or disk alarm: see its management UI; PIPELINE_BROKER_BLOCKED_TIMEOUT)"
        )

    def _refused_as_too_large(
        self, message: dramatiq.Message[Any], body: bytes, exc: BaseException, *, in_batch: bool = False
    ) -> MessageTooLarge:
        """The refusal of ``message``, whose encoded ``body`` RabbitMQ refused as too large (with
        the rest of its batch, ``in_batch``).
        """
        return MessageTooLarge(
            f"message {message.message_id} is {len(body):,} bytes, more than RabbitMQ at "
            f"{mask_url(self.settings.broker_url)} takes ({getattr(exc, 'reply_text', '')}): send a "
            "reference to the data (a file, a row id), not the data"
            + ("; nothing of its batch was sent" if in_batch else "")
        )

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"RabbitMQ at {mask_url(self.settings.broker_url)} did not take the message: {exc}")

    def _emit_own(self, signal: str, *args: Any) -> None:
        """Tell the middleware that define it of a signal of pipeline's own (Dramatiq's do not)."""
        for middleware in reversed(self.middleware):
            hook = getattr(middleware, signal, None)
            if hook is None:
                continue
            try:
                hook(self, *args)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", signal, middleware, exc_info=True)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """Publish ``message`` (after ``delay`` milliseconds) with pipeline's AMQP properties.

        A delayed message (a retry's too) is kept in Redis until it is due, then published by a
        worker of its queue (see :mod:`pipeline.store.schedule`); when Redis does not take it,
        it goes to the queue's ``.DQ`` with its due time (``eta``), as Dramatiq sends it. A
        message sent with an ``eta`` of its own and no delay is delayed until then.
        Middleware hear ``before_enqueue`` and ``after_enqueue`` as with Dramatiq's, and a
        publish that fails is tried again on a new connection. A retry's due time is also noted
        on the retried message (``retry_due``), where the job-records middleware reads it.

        Raises:
          BrokerUnavailable: RabbitMQ could not be reached or refused the message after the
            broker's retries: it does not have it.
          PublishOutcomeUnknown: The connection broke while the message was published, and the
            retries failed too, or RabbitMQ blocked publishers (a memory or disk alarm) longer
            than ``PIPELINE_BROKER_BLOCKED_TIMEOUT``: RabbitMQ may have it.
          InvalidPriority: The message's priority does not fit its queue.
          InvalidMessage: The message could never be published (too large for the server, or a
            ``delay`` or ``eta`` that is not a number of milliseconds).
        """
        # Read first, out of the middleware's hooks (which log what they raise): a bad setting
        # reaches the sender as the SettingsError that names it.
        self.settings.confirm_delivery  # noqa: B018
        check_fields(message)
        canonical = q_name(message.queue_name)
        queue_name = canonical
        now = current_millis()
        if delay is None:
            # A due time set as an option is a delay: held by a worker, it could outlive
            # RabbitMQ's consumer_timeout.
            delay = eta_delay(message, now)
        if delay is not None:
            check_delay(delay, now)
            queue_name = dq_name(canonical)
            due = now + delay
            retried, message = message, message.copy(queue_name=queue_name, options={ETA_OPTION: due})
            if is_retry(retried):
                retried.options[RETRY_DUE_OPTION] = due
        with refusals_raised():
            self.emit_before("enqueue", message, delay)
        if delay is not None and self._keep_until_due(message, canonical, due):
            self.emit_after("enqueue", message, delay)
            return message
        body = message.encode()
        properties = message_properties(message, self.settings.service_name)
        self.thread_connections.refresh()
        broke = False
        for attempt in range(1, MAX_ENQUEUE_ATTEMPTS + 1):
            try:
                try:
                    self.declare_queue(canonical, ensure=True)
                except QueueMismatch:
                    self._emit_own("after_enqueue_failure", message)
                    raise
                # Opened (when the thread has none) before the publish: a connection that could
                # not be opened sent nothing.
                channel = self.channel
                try:
                    channel.basic_publish(
                        exchange="",
                        routing_key=queue_name,
                        body=body,
                        properties=properties,
                        # Unroutable messages are returned only with confirms (Dramatiq's rule).
                        mandatory=self.confirm_delivery,
                    )
                except pika.exceptions.AMQPConnectionError:
                    # Broken after the publish may have reached RabbitMQ.
                    broke = True
                    raise
                break
            # pika lets a TLS failure (an unknown CA, a wrong host name) through as an OSError.
            except (*AMQP_FAILURES, ConnectionClosed, OSError) as exc:
                if _too_large(exc):
                    # No retry can pass: the same body is refused again, so refuse it now.
                    with contextlib.suppress(*AMQP_FAILURES, OSError):
                        del self.connection
                    self._emit_own("after_enqueue_failure", message)
                    raise self._refused_as_too_large(message, body, exc) from exc
                if isinstance(exc, pika.exceptions.UnroutableError):
                    self.queues_pending.add(canonical)
                with contextlib.suppress(*AMQP_FAILURES, OSError):
                    del self.connection
                blocked = isinstance(exc, pika.exceptions.ConnectionBlockedTimeout)
                # A blocked publisher is blocked on a new connection too, and a node that did not
                # answer a handshake costs the whole stack timeout again: no retry passes.
                if attempt < MAX_ENQUEUE_ATTEMPTS and not blocked and not _unanswered(exc):
                    continue
                if blocked and broke:
                    # RabbitMQ may read the message once the alarm clears: the record stays.
                    self._emit_own("after_enqueue_outcome_unknown", message)
                    raise PublishOutcomeUnknown(
                        f"{self._blocked()} and did not confirm message {message.message_id}: it may take it once "
                        "the alarm clears; look at its AsyncResult before sending it again",
                        message.message_id,
                    ) from exc
                if blocked:
                    self._emit_own("after_enqueue_failure", message)
                    raise BrokerUnavailable(f"{self._blocked()}: message {message.message_id} was not sent") from exc
                if broke:
                    # The record stays, since a worker may yet run the job, and the caller is
                    # told the outcome is unknown.
                    self._emit_own("after_enqueue_outcome_unknown", message)
                    raise PublishOutcomeUnknown(
                        f"RabbitMQ at {mask_url(self.settings.broker_url)} may or may not have taken message "
                        f"{message.message_id}: the connection broke while it was published ({exc}); look at "
                        "its AsyncResult before sending it again",
                        message.message_id,
                    ) from exc
                self._emit_own("after_enqueue_failure", message)
                raise self._unavailable(exc) from exc
        self.thread_connections.hold(self.connection)
        self.emit_after("enqueue", message, delay)
        return message

    @functools.cached_property
    def schedule(self) -> Schedule:
        """Where delayed messages wait for their due time (see :mod:`pipeline.store.schedule`)."""
        return Schedule(self.received.store.redis)

    def _keep_until_due(self, message: dramatiq.Message[Any], queue_name: str, due: int) -> bool:
        """Keep a delayed message in Redis until ``due``; False when Redis did not take it within
        a moment (``BRIEF_WAIT``), and the message then goes to the queue's ``.DQ`` as Dramatiq
        sends it (held by a worker until its time, which only a delay shorter than RabbitMQ's
        ``consumer_timeout`` survives).
        """
        kept = message.copy(queue_name=queue_name)
        del kept.options[ETA_OPTION]
        try:
            self.schedule.add(queue_name, message.message_id, due, kept.encode().decode(), brief=True)
        except ResultBackendUnavailable as exc:
            self.logger.warning(
                "Delayed message %s goes to %s, held by a worker until due: %s",
                message.message_id,
                dq_name(queue_name),
                exc,
            )
            return False
        return True

    def _emit_batch(
        self, stage: str, messages: Sequence[dramatiq.Message[Any]], skip: type[Middleware] | None = None
    ) -> None:
        """Tell every middleware (but those of type ``skip``) a batch is ``before`` or ``after``
        its enqueue.

        A middleware's ``<stage>_enqueue_batch`` hook is called once where it defines one, its
        ``<stage>_enqueue`` per message where it does not. As Dramatiq's ``emit_before`` and
        ``emit_after`` do: forward order before, reverse after; a ``MiddlewareError`` raised
        before the publish reaches the sender, any other failure is logged.
        """
        ordered = self.middleware if stage == "before" else list(reversed(self.middleware))
        for middleware in ordered:
            if skip is not None and isinstance(middleware, skip):
                continue
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

    def enqueue_many(
        self, messages: Sequence[dramatiq.Message[Any]], *, checked: bool = False
    ) -> list[dramatiq.Message[Any]]:
        """Publish messages of one queue in one AMQP transaction.

        RabbitMQ answers the commit once every message of the batch is routed and, the queues
        being durable and the messages persistent, written to disk: a return means all were
        taken, at the cost of one confirmation for the whole batch. A batch that fails is
        published again whole; a message RabbitMQ never saw is not recorded.

        Middleware see ``before_enqueue_batch`` and ``after_enqueue_batch`` once where they
        define them, ``before_enqueue`` and ``after_enqueue`` per message where they do not.

        Parameters:
          messages: Messages built with ``actor.message_with_options``, all for one queue.
          checked: The messages passed :class:`~pipeline.jobs.checks.MessageChecks` already
            (``send_many`` checks every call before its first batch): not checked again.

        Returns:
          The messages, as published.

        Raises:
          BrokerUnavailable: RabbitMQ could not be reached or refused the commit.
          InvalidPriority: A message's priority does not fit the queue.
          MessageTooLarge: A message is larger than RabbitMQ takes (the largest is named).
          PublishOutcomeUnknown: RabbitMQ blocked publishers (a resource alarm) past the
            broker's blocked timeout: it may take the batch once the alarm clears.
        """
        if not messages:
            return []
        self.settings.confirm_delivery  # noqa: B018 - a bad setting is raised here, named
        for message in messages:
            check_fields(message)
        queue_names = {m.queue_name for m in messages}
        if len(queue_names) != 1:
            raise PipelineError(f"a batch goes to one queue, not to {sorted(queue_names)}")
        (queue_name,) = queue_names
        try:
            with refusals_raised():
                self._emit_batch("before", messages, skip=MessageChecks if checked else None)
            self._publish_batch(queue_name, messages)
        except PublishOutcomeUnknown:
            self._emit_own("after_enqueue_batch_outcome_unknown", messages)
            raise
        except BaseException:
            self._emit_own("after_enqueue_batch_failure", messages)
            raise
        self.thread_connections.hold(self.connection)
        self._emit_batch("after", messages)
        return list(messages)

    def _publish_batch(self, queue_name: str, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Publish ``messages`` to ``queue_name`` in one transaction, the whole batch again on a
        new connection when it fails.

        Raises:
          BrokerUnavailable, MessageTooLarge, PublishOutcomeUnknown: As :meth:`enqueue_many`.
        """
        bodies = [(m.encode(), message_properties(m, self.settings.service_name)) for m in messages]
        self.thread_connections.refresh()
        for attempt in range(1, MAX_ENQUEUE_ATTEMPTS + 1):
            try:
                # Declared again for every batch: a transaction has no mandatory-flag check,
                # so a queue deleted behind the broker's back would swallow the batch.
                self.queues_pending.add(queue_name)
                self.declare_queue(queue_name, ensure=True)
                self._publish_transaction(queue_name, bodies)
                break
            except (*AMQP_FAILURES, ConnectionClosed, OSError) as exc:
                del self.connection
                if isinstance(exc, pika.exceptions.ConnectionBlockedTimeout):
                    # RabbitMQ may read the batch, its commit included, once the alarm clears.
                    raise PublishOutcomeUnknown(
                        f"{self._blocked()} and did not commit the batch of {len(messages)} messages from "
                        f"{messages[0].message_id}: it may take it once the alarm clears",
                        messages[0].message_id,
                    ) from exc
                if _too_large(exc):
                    # No retry can pass: the same batch is refused again.
                    (body, _), largest = max(zip(bodies, messages, strict=True), key=lambda pair: len(pair[0][0]))
                    raise self._refused_as_too_large(largest, body, exc, in_batch=True) from exc
                if attempt == MAX_ENQUEUE_ATTEMPTS or _unanswered(exc):
                    raise self._unavailable(exc) from exc

    def _publish_transaction(self, queue_name: str, bodies: Sequence[tuple[bytes, pika.BasicProperties]]) -> None:
        channel = self.connection.channel()
        try:
            channel.tx_select()
            publish_together(channel, queue_name, bodies)
            channel.tx_commit()
        finally:
            if channel.is_open:
                channel.close()


def _unanswered(exc: BaseException) -> bool:
    """Whether a connection could not be opened because the node took it and did not answer in
    pika's stack timeout (frozen, or overloaded), directly or as the cause of a failed declare.
    """
    cause = exc.message if isinstance(exc, ConnectionClosed) else exc
    return isinstance(cause, AMQPConnectorException)


def _too_large(exc: BaseException) -> bool:
    """Whether RabbitMQ closed the channel because a message is over its ``max_message_size``."""
    return (
        isinstance(exc, pika.exceptions.ChannelClosedByBroker)
        and exc.reply_code == PRECONDITION_FAILED
        and "max size" in exc.reply_text
    )


def build_broker(settings: Settings) -> PipelineBroker:
    """A broker for ``settings`` with Dramatiq's default middleware plus pipeline's.

    The middleware, in order: AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines,
    SettingsAtStart, MessageChecks, MessagePriorities, GracefulShutdown, MailRateLimit, JobRecords,
    PrefetchFromHolds, ConsumerTimeoutCheck, QueueTypeReport, ScheduledPublisher, WorkerLogs,
    PipelineRetries (in place of Retries, with the retry count and backoff from the settings);
    and WorkerMetrics last (Dramatiq's Prometheus, when
    ``PIPELINE_METRICS_PORT`` is set). Nothing reads ``settings`` until a send or a worker needs it.
    """
    retries = PipelineRetries(settings)
    middleware = [retries if m is Retries else m() for m in default_middleware]
    received = ReceivedStates(get_store(settings))
    quiet = Quiet()
    unsent = UnsentWrites()
    broker = PipelineBroker(settings, middleware=middleware, received=received, quiet=quiet, unsent=unsent)
    extras = (
        SettingsAtStart(settings),
        MessageChecks(),
        MessagePriorities(settings),
        GracefulShutdown(settings, quiet, get_store(settings)),
        MailRateLimit(settings, get_store(settings)),
        JobRecords(get_store(settings), received, unsent),
        PrefetchFromHolds(settings),
        ConsumerTimeoutCheck(settings),
        QueueTypeReport(settings),
        ScheduledPublisher(),
        WorkerLogs(lambda: settings.broker_url),
    )
    for extra in extras:
        broker.add_middleware(extra, before=PipelineRetries)
    broker.add_middleware(WorkerMetrics(settings))
    return broker


@functools.cache
def get_broker() -> PipelineBroker:
    """The process's broker, built on first use from the process's settings (read when first
    needed) and set as Dramatiq's global broker: call it before declaring an actor.
    """
    built = build_broker(PROCESS_SETTINGS)
    dramatiq.set_broker(built)
    return built


def __getattr__(name: str) -> Any:
    """``pipeline.broker.broker``: the process's broker (see :func:`get_broker`)."""
    if name == "broker":
        return get_broker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Dead-lettered messages: look at them without taking them, say why each failed, put them back.

Dead-lettered messages wait in ``<queue>.XQ``. Taking them does not acknowledge them; closing
the channel puts every one back where it was, so the queue keeps its messages and their order.
Requeueing publishes a message to its queue again, under the same message id, with a publisher
confirm, and only then acknowledges (removes) the dead copy; its record goes back to ``QUEUED``
first, noting the requeue, so the worker does not take it for a finished job. The ``pipeline
dlq`` command and the web dashboard both work through here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import dramatiq
import pika
import pika.exceptions
from dramatiq.common import q_name, xq_name
from dramatiq.errors import DecodeError
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from pipeline.amqp_text import queue_name_problem
from pipeline.errors import BrokerUnavailable, ManagementUnavailable, PipelineError, shown
from pipeline.job_id import is_job_id
from pipeline.jobs.checks import malformed
from pipeline.jobs.options import ETA_OPTION, REDELIVERIES_OPTION, RETRIES_OPTION
from pipeline.jobs.properties import message_properties
from pipeline.management import ManagementApi, broker_vhost, dramatiq_queues
from pipeline.printable import printable
from pipeline.queues import QUEUES
from pipeline.settings import get_settings, mask_url
from pipeline.states import JobState
from pipeline.store.records import get_store
from pipeline.timestamps import now_iso

#: Message options a requeued message starts without: it gets a fresh retry budget.
_SPENT_OPTIONS = (RETRIES_OPTION, ETA_OPTION, REDELIVERIES_OPTION, "traceback")
#: Dead-lettered messages looked at by one command, at most, unless ``--limit`` says otherwise.
DEFAULT_LIMIT = 1000
#: What a command says when dead letters lay past the window it looked at.
MORE_REMAIN = f"only the first {DEFAULT_LIMIT:,} dead letters were looked at, more remain"


class Requeued(NamedTuple):
    """What a requeue of chosen dead letters did."""

    #: The ids requeued.
    done: list[str]
    #: The ids passed over, each with why no requeue could help it (it stays a dead letter).
    refused: dict[str, str]
    #: Whether more dead letters lay past the window looked at.
    more: bool


@dataclasses.dataclass
class DeadMessage:
    """One dead-lettered message, as taken (not yet acknowledged) from a ``.XQ`` queue."""

    queue: str
    tag: int
    properties: pika.BasicProperties
    body: bytes
    message: dramatiq.Message[Any] | None

    @property
    def message_id(self) -> str | None:
        """The job id: the body's, else the AMQP property's."""
        return self.message.message_id if self.message else self.properties.message_id

    @property
    def actor(self) -> str | None:
        """The actor the message was for."""
        return self.message.actor_name if self.message else self.properties.type

    @functools.cached_property
    def fresh(self) -> dramatiq.Message[Any] | None:
        """The message a requeue publishes: the same id and arguments, on the queue itself,
        with a fresh retry budget; None when the body is not a message.
        """
        if self.message is None:
            return None
        options = {k: v for k, v in self.message.options.items() if k not in _SPENT_OPTIONS}
        return dramatiq.Message(
            queue_name=q_name(self.message.queue_name),
            actor_name=self.message.actor_name,
            args=self.message.args,
            kwargs=self.message.kwargs,
            options=options,
            message_id=self.message.message_id,
            message_timestamp=self.message.message_timestamp,
        )

    @functools.cached_property
    def requeue_problem(self) -> str | None:
        """Why no requeue could help (a worker would dead-letter the message again, or it
        cannot be published at all), or None. Another service's message may be any of these.
        """
        fresh = self.fresh
        if fresh is None:
            return "its body is not a valid message"
        if not is_job_id(fresh.message_id):
            return f"message_id {shown(fresh.message_id)} is not a job id"
        return malformed(fresh, fresh.queue_name)

    def summary(self, shown: Collection[str] = ()) -> dict[str, Any]:
        """What the message is and why it failed, its arguments redacted to their shapes but for
        the keyword arguments named in ``shown`` (those its actor declares safe to show).
        """
        found = get_store().read(self.message_id) if self.message_id else None
        record: dict[str, Any] = dict(found) if found else {}
        error = record.get("error") or {}
        return {
            "message_id": self.message_id,
            "queue": self.queue,
            "actor": self.actor,
            "arguments": argument_shapes(self.message, shown) if self.message else "(the body is not a message)",
            "state": record.get("state", "PENDING"),
            "attempt": record.get("attempt"),
            "failed_at": record.get("finished_at"),
            "reason": f"{error.get('type', '')}: {error.get('message', '')}" if error else "(no record)",
        }


def argument_shapes(message: dramatiq.Message[Any], shown: Collection[str] = ()) -> str:
    """A message's arguments as their names and kinds, never their values (mail context may hold a
    password-reset link, an address is personal data), but for the keyword arguments in ``shown``.
    """

    def shape(value: Any) -> str:
        if isinstance(value, dict):
            return f"object of {len(value)} keys"
        if isinstance(value, list):
            return f"list of {len(value)}"
        if isinstance(value, str):
            return f"text of {len(value)} characters"
        return type(value).__name__

    parts = [shape(value) for value in message.args]
    parts += [
        f"{name}={json.dumps(value, ensure_ascii=False)[:200]}" if name in shown else f"{name}: {shape(value)}"
        for name, value in message.kwargs.items()
    ]
    return ", ".join(parts) or "none"


def dead_letter_queues(queue: str | None) -> list[str]:
    """The ``.XQ`` queues a command looks at: the one of ``queue``; else those of every queue
    Dramatiq declared on the broker's virtual host (other services' actors' too), as the
    management API lists them, or of pipeline's own queues when it does not answer.
    """
    if queue is not None:
        return [xq_name(q_name(queue.removesuffix(".XQ")))]
    settings = get_settings()
    try:
        names = [found["name"] for found in ManagementApi.from_settings(settings).queues(broker_vhost(settings))]
    except ManagementUnavailable:
        return [xq_name(name) for name in QUEUES]
    return [xq_name(name) for name in dramatiq_queues(names)]


class DeadLetters:
    """A channel on the dead-letter queues; closing it puts back every message not acknowledged."""

    def __init__(self) -> None:
        from pipeline.broker import broker

        self.broker = broker
        try:
            self.channel = broker.thread_connection().channel()
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:
            raise BrokerUnavailable(f"RabbitMQ at {mask_url(get_settings().broker_url)} did not answer: {exc}") from exc

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.channel.is_open:
            self.channel.close()

    def queue_problem(self, queue: str) -> str | None:
        """Why ``queue`` names no queue of Dramatiq's on the virtual host, or None. An operator
        names a queue (``default``) or its dead-letter queue (``default.XQ``); a delay queue
        keeps no dead letters of its own. The one rule of ``pipeline dlq`` and the dashboard.
        """
        shown = repr(printable(queue, 60))
        if not queue:
            return "no queue was named"
        if queue.endswith(".DQ"):
            return f"{shown} is a delay queue, which keeps no dead letters: name its queue, {q_name(queue)!r}"
        if not self.has_queue(queue):
            (dead,) = dead_letter_queues(queue)
            return (
                f"RabbitMQ has no queue {printable(dead, 200)}: {shown} is not a queue of Dramatiq's on this "
                "virtual host (see `pipeline queues`)"
            )
        return None

    def has_queue(self, queue: str) -> bool:
        """Whether RabbitMQ has ``queue``'s dead-letter queue: Dramatiq declares it with the
        queue, so a name without one is not a queue of Dramatiq's (mistyped, most likely).
        """
        if queue_name_problem(q_name(queue)) is not None:
            return False  # no queue of Dramatiq's has a name AMQP could not carry
        (dead,) = dead_letter_queues(queue)
        asker = self.broker.thread_connection().channel()
        try:
            asker.queue_declare(dead, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        finally:
            if asker.is_open:
                asker.close()
        return True

    def take(self, queues: list[str], limit: int) -> list[DeadMessage]:
        """Up to ``limit`` messages of ``queues``, oldest first, not acknowledged."""
        taken: list[DeadMessage] = []
        for queue in queues:
            while len(taken) < limit:
                try:
                    method, properties, body = self.channel.basic_get(queue, auto_ack=False)
                except pika.exceptions.ChannelClosedByBroker:
                    # The queue does not exist (nothing was ever dead-lettered there).
                    self.channel = self.broker.thread_connection().channel()
                    break
                if method is None:
                    break
                try:
                    message: dramatiq.Message[Any] | None = dramatiq.Message.decode(body)
                except DecodeError:
                    message = None
                taken.append(DeadMessage(queue, method.delivery_tag, properties, body, message))
        return taken

    def requeue(self, dead: DeadMessage) -> None:
        """Publish ``dead`` to its queue again (confirmed), its record back to ``QUEUED``, then
        remove the dead copy.

        Raises:
          PipelineError: The body is not a message, so there is nothing a worker could run.
          BrokerUnavailable: RabbitMQ did not confirm the publish; the dead copy stays.
        """
        problem, fresh = dead.requeue_problem, dead.fresh
        if problem is not None or fresh is None:
            raise PipelineError(f"message {dead.message_id} in {dead.queue} was not requeued: {problem}")
        store = get_store()
        before = store.read(fresh.message_id)
        store.requeue(fresh.message_id, now_iso())
        publisher = self.broker.thread_connection().channel()
        try:
            self.broker.declare_queue(fresh.queue_name, ensure=True)
            publisher.confirm_delivery()
            properties = message_properties(fresh, get_settings().service_name)
            publisher.basic_publish("", fresh.queue_name, fresh.encode(), properties, mandatory=True)
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:
            if before is not None and before.get("state") == "FAILURE":
                store.write(fresh.message_id, JobState.FAILURE, error=before.get("error"))
            raise BrokerUnavailable(f"message {fresh.message_id} was not requeued: {exc}") from exc
        finally:
            if publisher.is_open:
                publisher.close()
        self.channel.basic_ack(dead.tag)

    def requeue_chosen(
        self,
        queues: list[str],
        chosen: Callable[[DeadMessage], bool] | None,
        limit: int | None = None,
    ) -> Requeued:
        """Requeue the dead letters of ``queues`` that ``chosen`` picks (every one: None),
        ``limit`` at most, looking at :data:`DEFAULT_LIMIT` at a time. One that no requeue
        could help (see :attr:`DeadMessage.requeue_problem`) is passed over, and stays.

        Every one: each window is requeued whole, so the next holds new messages, until the
        queues are empty. Else the one window is looked at: those passed over are still held
        here, and what lies past them is not looked at.

        Raises:
          BrokerUnavailable: RabbitMQ did not confirm a publish: the requeues before it are done.
        """
        done: list[str] = []
        refused: dict[str, str] = {}
        while limit is None or len(done) < limit:
            taken = self.take(queues, DEFAULT_LIMIT)
            for dead in taken:
                if limit is not None and len(done) >= limit:
                    break
                if chosen is None or chosen(dead):
                    if dead.requeue_problem is not None:
                        refused[str(dead.message_id)] = dead.requeue_problem
                        continue
                    self.requeue(dead)
                    done.append(str(dead.message_id))
            full = len(taken) == DEFAULT_LIMIT
            if chosen is not None or not full:
                return Requeued(done, refused, full and chosen is not None)
        return Requeued(done, refused, False)

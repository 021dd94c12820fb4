"""``pipeline dlq``: look at dead-lettered messages, say why each failed, and put them back.

Dead-lettered messages wait in ``<queue>.XQ``. Listing takes them without acknowledging them
and then closes the channel, so RabbitMQ puts every one back where it was: the queue keeps its
messages and their order. Requeueing publishes a message to its queue again, under the same
message id, with a publisher confirm, and only then acknowledges (removes) the dead copy; its
record goes back to ``QUEUED`` first, noting the requeue, so the worker does not take it for a
finished job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.common import q_name, xq_name
from dramatiq.errors import DecodeError

from pipeline.cli.exit_codes import RET_OK, RET_UNKNOWN
from pipeline.errors import BrokerUnavailable, PipelineError
from pipeline.jobs.options import ETA_OPTION, REDELIVERIES_OPTION, RETRIES_OPTION
from pipeline.jobs.properties import message_properties
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE
from pipeline.settings import get_settings, mask_url
from pipeline.states import JobState
from pipeline.store.records import get_store
from pipeline.timestamps import now_iso

#: Message options a requeued message starts without: it gets a fresh retry budget.
_SPENT_OPTIONS = (RETRIES_OPTION, ETA_OPTION, REDELIVERIES_OPTION, "traceback")
#: Dead-lettered messages looked at by one command, at most, unless ``--limit`` says otherwise.
DEFAULT_LIMIT = 1000


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

    def summary(self) -> dict[str, Any]:
        """What the message is and why it failed, its arguments redacted to their shapes."""
        found = get_store().read(self.message_id) if self.message_id else None
        record: dict[str, Any] = dict(found) if found else {}
        error = record.get("error") or {}
        return {
            "message_id": self.message_id,
            "queue": self.queue,
            "actor": self.actor,
            "arguments": argument_shapes(self.message) if self.message else "(the body is not a message)",
            "state": record.get("state", "PENDING"),
            "attempt": record.get("attempt"),
            "failed_at": record.get("finished_at"),
            "reason": f"{error.get('type', '')}: {error.get('message', '')}" if error else "(no record)",
        }


def argument_shapes(message: dramatiq.Message[Any]) -> str:
    """A message's arguments as their names and kinds, never their values (mail context may hold a
    password-reset link, an address is personal data).
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
    parts += [f"{name}: {shape(value)}" for name, value in message.kwargs.items()]
    return ", ".join(parts) or "none"


def dead_letter_queues(queue: str | None) -> list[str]:
    """The ``.XQ`` queues a command looks at: the one of ``queue``, or those of both queues."""
    if queue is None:
        return [xq_name(DEFAULT_QUEUE), xq_name(SLOW_QUEUE)]
    return [xq_name(q_name(queue.removesuffix(".XQ")))]


class DeadLetters:
    """A channel on the dead-letter queues; closing it puts back every message not acknowledged."""

    def __init__(self) -> None:
        from pipeline.broker import broker

        self.broker = broker
        try:
            self.channel = broker.connection.channel()
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"RabbitMQ at {mask_url(get_settings().broker_url)} did not answer: {exc}") from exc

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.channel.is_open:
            self.channel.close()

    def take(self, queues: list[str], limit: int) -> list[DeadMessage]:
        """Up to ``limit`` messages of ``queues``, oldest first, not acknowledged."""
        taken: list[DeadMessage] = []
        for queue in queues:
            while len(taken) < limit:
                try:
                    method, properties, body = self.channel.basic_get(queue, auto_ack=False)
                except pika.exceptions.ChannelClosedByBroker:
                    # The queue does not exist (nothing was ever dead-lettered there).
                    self.channel = self.broker.connection.channel()
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
        if dead.message is None:
            raise PipelineError(f"message {dead.message_id} in {dead.queue} is not a valid message: not requeued")
        options = {k: v for k, v in dead.message.options.items() if k not in _SPENT_OPTIONS}
        fresh: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=q_name(dead.message.queue_name),
            actor_name=dead.message.actor_name,
            args=dead.message.args,
            kwargs=dead.message.kwargs,
            options=options,
            message_id=dead.message.message_id,
            message_timestamp=dead.message.message_timestamp,
        )
        store = get_store()
        before = store.read(fresh.message_id)
        store.requeue(fresh.message_id, now_iso())
        publisher = self.broker.connection.channel()
        try:
            self.broker.declare_queue(fresh.queue_name, ensure=True)
            publisher.confirm_delivery()
            properties = message_properties(fresh, get_settings().service_name)
            publisher.basic_publish("", fresh.queue_name, fresh.encode(), properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            if before is not None and before.get("state") == "FAILURE":
                store.write(fresh.message_id, JobState.FAILURE, error=before.get("error"))
            raise BrokerUnavailable(f"message {fresh.message_id} was not requeued: {exc}") from exc
        finally:
            if publisher.is_open:
                publisher.close()
        self.channel.basic_ack(dead.tag)


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "queue", "actor", "failed at", "reason", "arguments")
    for row in rows:
        table.add_row(
            str(row["message_id"]),
            row["queue"],
            str(row["actor"]),
            str(row["failed_at"] or ""),
            row["reason"],
            row["arguments"],
        )
    Console(width=200).print(table)


def run_list(args: argparse.Namespace) -> int:
    """``pipeline dlq list``."""
    with DeadLetters() as letters:
        rows = [dead.summary() for dead in letters.take(dead_letter_queues(args.queue), args.limit)]
    _print(rows, args.json)
    return RET_OK


def run_show(args: argparse.Namespace) -> int:
    """``pipeline dlq show ID``."""
    with DeadLetters() as letters:
        found = [d for d in letters.take(dead_letter_queues(None), DEFAULT_LIMIT) if d.message_id == args.message_id]
        if not found:
            print(f"pipeline: no dead-lettered message {args.message_id}")
            return RET_UNKNOWN
        summary = found[0].summary()
        summary["headers"] = {k: v for k, v in (found[0].properties.headers or {}).items() if k != "x-death"}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    else:
        for name, value in summary.items():
            print(f"{name:<10} {value}")
    return RET_OK


def run_requeue(args: argparse.Namespace) -> int:
    """``pipeline dlq requeue``."""
    if not (args.ids or args.all or args.actor):
        raise PipelineError("say which messages: job ids, --all, or --actor NAME")
    wanted = set(args.ids)
    done: list[str] = []
    with DeadLetters() as letters:
        for dead in letters.take(dead_letter_queues(args.queue), DEFAULT_LIMIT):
            if args.limit is not None and len(done) >= args.limit:
                break
            chosen = args.all or (dead.message_id in wanted) or (args.actor is not None and dead.actor == args.actor)
            if chosen:
                letters.requeue(dead)
                done.append(str(dead.message_id))
    missing = sorted(wanted - set(done))
    if args.json:
        print(json.dumps({"requeued": done, "not_found": missing}))
    else:
        print(f"requeued {len(done)} message(s)" + (f"; not found: {', '.join(missing)}" if missing else ""))
    return RET_UNKNOWN if missing else RET_OK


def run_purge(args: argparse.Namespace) -> int:
    """``pipeline dlq purge QUEUE``."""
    (queue,) = dead_letter_queues(args.queue)
    with DeadLetters() as letters:
        try:
            purged = letters.channel.queue_purge(queue).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            purged = 0
    print(json.dumps({"queue": queue, "purged": purged}) if args.json else f"purged {purged} message(s) from {queue}")
    return RET_OK


def add_parser(commands: Any) -> None:
    """Add ``dlq`` and its subcommands to the command's subparsers."""
    dlq = commands.add_parser("dlq", help="dead-lettered messages: list, show, requeue, purge")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)

    listing = sub.add_parser("list", help="list dead-lettered messages and why each failed (changes no queue)")
    listing.add_argument("--queue", help="default or slow (both when omitted)")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="list N at most (default 100)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)

    show = sub.add_parser("show", help="one dead-lettered message, its arguments' shapes and its failure")
    show.add_argument("message_id", help="the job id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=run_show)

    requeue = sub.add_parser(
        "requeue",
        help="put dead-lettered messages back in their queue",
        description="Publish messages again under their ids (confirmed), records back to QUEUED. "
        "Exit 0: all requeued; 4: an id given was not found.",
    )
    requeue.add_argument("ids", nargs="*", metavar="ID", help="job ids to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every message (of --queue)")
    requeue.add_argument("--actor", help="requeue the messages of this actor")
    requeue.add_argument("--queue", help="default or slow (both when omitted)")
    requeue.add_argument("--limit", type=int, metavar="N", help="requeue N messages at most")
    requeue.add_argument("--json", action="store_true", help="print JSON")
    requeue.set_defaults(handler=run_requeue)

    purge = sub.add_parser("purge", help="delete every dead-lettered message of a queue")
    purge.add_argument("queue", help="default or slow")
    purge.add_argument("--json", action="store_true", help="print JSON")
    purge.set_defaults(handler=run_purge)

"""The actor class of pipeline: Dramatiq's ``Actor`` with a ``priority`` keyword and a bulk send.

Declare actors with :func:`actor` (after :mod:`pipeline.broker` is imported)::

    @actor(queue_name="default", broker_priority=3)
    def ping(n: int) -> dict: ...

    ping.send(1)                         # the actor's default priority, 3
    ping.send(1, priority=9)             # jumps ahead of a backlog
    ping.send_many([{"n": i} for i in range(1000)])   # one confirmation per batch

An actor function therefore cannot take a parameter named ``priority`` or ``idempotency_key``.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import dramatiq

from pipeline.errors import InvalidIdempotencyKey, InvalidMessage, PipelineError, shown
from pipeline.jobs.checks import MessageChecks, Refusal, refusals_raised
from pipeline.jobs.options import BULK_PRIORITY_OPTION, PRIORITY_OPTION, FromSettings
from pipeline.jobs.send_once import check_idempotency_key, claim, publish_or_release, send_once
from pipeline.settings import PROCESS_SETTINGS

if TYPE_CHECKING:
    from pipeline.broker import PipelineBroker

#: Messages per AMQP transaction in :meth:`PipelineActor.send_many`.
DEFAULT_BATCH_SIZE = 500


class ActorOptions(dict[str, Any]):
    """An actor's options, whose :class:`FromSettings` values are read when asked for."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        return value.value() if isinstance(value, FromSettings) else value

    def get(self, key: str, default: Any = None) -> Any:
        """The option's value, or ``default``."""
        return self[key] if key in self else default  # noqa: SIM401 - self.get is this method


#: The callbacks Dramatiq's ``message_with_options`` takes as actors, and turns into their names.
ACTOR_CALLBACKS = ("on_failure", "on_success")


class PipelineActor(dramatiq.Actor):
    """A Dramatiq actor whose ``send`` takes a ``priority`` and which can send in bulk.

    A declaration the middleware refuses (a default priority its queue cannot hold) raises the
    pipeline error that says why, here and now.
    """

    def __init__(self, fn: Callable[..., Any], **arguments: Any) -> None:
        with refusals_raised():
            super().__init__(fn, **arguments)
        self.options = ActorOptions(self.options)

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dramatiq.Message[Any]:
        """Dramatiq's ``message_with_options``, with a callback that is neither an actor nor an
        actor's name refused as :class:`~pipeline.errors.InvalidMessage` naming it (Dramatiq
        raises a bare ``TypeError``).
        """
        for name in ACTOR_CALLBACKS:
            callback = options.get(name)
            if callback is not None and not isinstance(callback, (str, dramatiq.Actor)):
                raise InvalidMessage(
                    f"{self.actor_name}: option {name} {shown(callback)} is not an actor or an actor's name"
                )
        return super().message_with_options(args=args, kwargs=kwargs, **options)

    def send(
        self, *args: Any, priority: int | None = None, idempotency_key: str | None = None, **kwargs: Any
    ) -> dramatiq.Message[Any]:
        """Send a message to this actor.

        Parameters:
          *args: Positional arguments of the actor.
          priority: RabbitMQ priority, 0 up to the queue's maximum, higher is sooner; the
            actor's ``broker_priority`` when omitted.
          idempotency_key: When given, a second send with the same key to this actor within
            ``PIPELINE_IDEMPOTENCY_WINDOW`` publishes nothing and returns the first job's id
            (see :mod:`pipeline.jobs.send_once`).
          **kwargs: Keyword arguments of the actor.

        Returns:
          The message; ``message.message_id`` is the job's id for ``AsyncResult``.

        Raises:
          BrokerUnavailable: RabbitMQ did not take the message.
          InvalidPriority: ``priority`` does not fit the queue.
          InvalidIdempotencyKey: ``idempotency_key`` is empty, too long or not printable.
        """
        options = {} if priority is None else {PRIORITY_OPTION: priority}
        return self.send_with_options(args=args, kwargs=kwargs, idempotency_key=idempotency_key, **options)

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: datetime.timedelta | int | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dramatiq.Message[Any]:
        """Dramatiq's ``send_with_options``, with ``idempotency_key`` as :meth:`send` takes it;
        a message refused at send raises the pipeline error that refused it
        (:class:`~pipeline.errors.InvalidPriority`, :class:`~pipeline.errors.InvalidMessage`)
        whatever the broker.
        """
        with refusals_raised():
            if idempotency_key is None:
                return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
            if isinstance(delay, datetime.timedelta):
                delay = int(delay.total_seconds() * 1000)
            message = self.message_with_options(args=args, kwargs=kwargs, **options)
            settings = getattr(self.broker, "settings", PROCESS_SETTINGS)
            return send_once(message, idempotency_key, lambda m: self.broker.enqueue(m, delay=delay), settings)

    def send_many(
        self,
        calls: Iterable[Mapping[str, Any] | tuple[Sequence[Any], Mapping[str, Any]]],
        *,
        priority: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[dramatiq.Message[Any]]:
        """Send many messages to this actor, confirmed by RabbitMQ once per batch.

        Every returned message was taken by RabbitMQ (an AMQP transaction per batch, committed
        to disk) and has its ``QUEUED`` record, written for the whole batch in one Redis round
        trip. Much faster than ``send`` in a loop, which waits for a confirm per message.

        Parameters:
          calls: The keyword arguments of each call, or ``(args, kwargs)`` pairs.
          priority: RabbitMQ priority of every message; when omitted, the actor's
            ``bulk_priority`` if it declares one, else its default.
          batch_size: Messages per transaction.
          idempotency_keys: One per call (None: no key), as :meth:`send` takes them: a call
            whose key a send already used is not published, and its returned message has
            that send's job id.

        Every call and key is checked before the first batch is published: one that could never
        be sent refuses the whole, and nothing is published.

        Returns:
          The messages, in the order of ``calls``.

        Raises:
          InvalidPriority: ``priority`` does not fit the queue.
          InvalidIdempotencyKey: A key cannot be one, or ``idempotency_keys`` is not a list of keys
            (a text is not).
          InvalidMessage: ``calls`` is not a list of calls, a call is not of either form, or a
            check refused one (naming it).
          BrokerUnavailable: RabbitMQ did not take a batch. When earlier batches were taken,
            the error's ``sent`` holds their messages (and its note says how many): those calls
            must not be sent again; the others were not sent.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number, 1 or more, not {shown(batch_size)}")
        if isinstance(calls, Mapping) or not isinstance(calls, Iterable):
            raise InvalidMessage(
                f"{self.actor_name}: send_many takes a list of calls (keyword arguments, or (args, kwargs) "
                f"pairs), not {shown(calls)}"
            )
        if idempotency_keys is not None and (
            isinstance(idempotency_keys, str | bytes) or not isinstance(idempotency_keys, Iterable)
        ):
            # A text is a sequence too: each of its characters would be a call's key.
            raise InvalidIdempotencyKey(
                f"{self.actor_name}: idempotency_keys is not a list of keys, one per call, "
                f"but {shown(idempotency_keys)}"
            )
        if priority is None:
            priority = self.options.get(BULK_PRIORITY_OPTION)
        options = {} if priority is None else {PRIORITY_OPTION: priority}
        messages = []
        for position, call in enumerate(calls, 1):
            args, kwargs = self._arguments(position, call)
            messages.append(self.message_with_options(args=args, kwargs=kwargs, **options))
        keys: list[str | None] = list(idempotency_keys) if idempotency_keys is not None else [None] * len(messages)
        if len(keys) != len(messages):
            raise ValueError(f"idempotency_keys holds {len(keys)} keys for {len(messages)} calls")
        self._check_calls(messages, keys)
        sent: list[dramatiq.Message[Any]] = []
        try:
            for start in range(0, len(messages), batch_size):
                sent += self._send_batch(messages[start : start + batch_size], keys[start : start + batch_size])
        except PipelineError as exc:
            if sent:
                exc.sent = sent
                exc.add_note(
                    f"send_many sent calls 1 to {len(sent):,} of {len(messages):,} before this error: their "
                    "messages are in the error's sent; the others were not sent"
                )
            raise
        return sent

    def _check_calls(self, messages: list[dramatiq.Message[Any]], keys: list[str | None]) -> None:
        """Refuse the whole of a ``send_many`` when one of its calls or keys could never be sent,
        naming it, as the broker's checks would refuse its batch (:class:`MessageChecks`).

        Raises:
          InvalidMessage: A check refused a call.
          InvalidIdempotencyKey: A key cannot be one.
        """
        for position, key in enumerate(keys, 1):
            if key is not None:
                try:
                    check_idempotency_key(key)
                except InvalidIdempotencyKey as exc:
                    raise InvalidIdempotencyKey(f"call {position} of send_many: {exc}") from None
        checks = [m for m in self.broker.middleware if isinstance(m, MessageChecks)]
        for checker in checks:
            for position, message in enumerate(messages, 1):
                try:
                    checker.check(self.broker, message)
                except Refusal as refused:
                    raise InvalidMessage(f"call {position} of send_many: {refused.error}") from refused.error.__cause__

    def _arguments(self, position: int, call: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments of one of ``send_many``'s calls.

        Raises:
          InvalidMessage: The call is neither keyword arguments nor an ``(args, kwargs)`` pair.
        """
        if isinstance(call, Mapping):
            return (), dict(call)
        if isinstance(call, tuple | list) and len(call) == 2:
            args, kwargs = call
            if isinstance(args, tuple | list) and isinstance(kwargs, Mapping):
                return tuple(args), dict(kwargs)
        raise InvalidMessage(
            f"{self.actor_name}: call {position} of send_many, {shown(call)}, is neither keyword arguments "
            "nor an (args, kwargs) pair"
        )

    def _send_batch(self, messages: list[dramatiq.Message[Any]], keys: list[str | None]) -> list[dramatiq.Message[Any]]:
        """Publish one batch, but for the calls whose key a send already used."""
        broker = cast("PipelineBroker", self.broker)
        settings = getattr(broker, "settings", PROCESS_SETTINGS)
        out: list[dramatiq.Message[Any]] = list(messages)
        publish: list[dramatiq.Message[Any]] = []
        releases: list[Callable[[], None]] = []

        def release_all() -> None:
            for release in releases:
                release()

        def claim_and_publish() -> None:
            # A key given twice in one batch is one send: the later call gets the earlier's id.
            batch_keys: dict[str, str] = {}
            for position, (message, key) in enumerate(zip(messages, keys, strict=True)):
                if key is None:
                    publish.append(message)
                    continue
                if key in batch_keys:
                    out[position] = message.copy(message_id=batch_keys[key])
                    continue
                first, release = claim(message, key, settings)
                if first is not None:
                    out[position] = first
                else:
                    publish.append(message)
                    releases.append(release)
                batch_keys[key] = out[position].message_id
            broker.enqueue_many(publish, checked=True)

        # Every key taken so far is given back when a claim or the publish fails.
        publish_or_release(claim_and_publish, release_all)
        return out


#: Declares a :class:`PipelineActor`; takes the arguments of ``dramatiq.actor``.
actor = functools.partial(dramatiq.actor, actor_class=PipelineActor)

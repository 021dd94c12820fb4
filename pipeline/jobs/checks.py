"""Send-time checks: a message that can never run is refused in the sender, before it is queued.

Dramatiq lets only a ``MiddlewareError`` out of a ``before_*`` hook (anything else is logged
and swallowed), so a check raises :class:`Refusal` around the pipeline error it means, and the
actor class and the broker raise that error to the caller (:func:`refusals_raised`).

The rules of what a message must hold (its fields' types, its options' numbers, the actors and
messages its callbacks and pipeline name) are also those a worker holds each delivery to
before it runs (:func:`malformed`, :func:`callback_problem`, used by
:mod:`pipeline.jobs.finished`): a message another service publishes meets what pipeline's own
senders do, since an option of the wrong type would fail a middleware's hook, which Dramatiq
logs and passes, and the job would run half-wired, or its callback or next step be lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, MiddlewareError

from pipeline.amqp_text import SHORT_TEXT, is_short_text, queue_name_problem
from pipeline.errors import (
    InvalidActor,
    InvalidMessage,
    PermanentError,
    PipelineError,
    not_text,
    shown,
)
from pipeline.job_id import is_job_id
from pipeline.jobs.holds import run_limit
from pipeline.jobs.options import (
    BROKER_PRIORITY_OPTION,
    CHECK_OPTION,
    ETA_OPTION,
    RATE_WAIT_OPTION,
    REDELIVERIES_OPTION,
    RETRIES_OPTION,
    RETRY_DUE_OPTION,
    SHOWN_ARGUMENTS_OPTION,
    FromSettings,
)

logger = logging.getLogger(__name__)


class Refusal(MiddlewareError):
    """Carries the pipeline error that refuses a message or a declaration out of Dramatiq's hooks.

    Parameters:
      error: What the caller is to see.
    """

    def __init__(self, error: PipelineError) -> None:
        super().__init__(str(error))
        self.error = error


class _RefusalsRaised(contextlib.AbstractContextManager[None]):
    """The block of :func:`refusals_raised`: holds nothing, so one serves every block and thread."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if isinstance(error, Refusal):
            raise error.error from None


_REFUSALS_RAISED = _RefusalsRaised()


def refusals_raised() -> contextlib.AbstractContextManager[None]:
    """Raise the pipeline error a :class:`Refusal` carries out of the block, in its place.

    A class's block, not a generator's: every send passes through two of them, and a
    generator's costs several times more.
    """
    return _REFUSALS_RAISED


def is_retry(message: dramatiq.Message[Any] | MessageProxy) -> bool:
    """True for a message the Retries middleware is sending again."""
    return bool(message.options.get(RETRIES_OPTION))


#: The latest a delayed job may be due: the last millisecond of the year 9999, the last a
#: record's timestamps can hold.
LATEST_DUE_MILLIS = 253_402_300_799_999


class NumberRule(NamedTuple):
    """What an option's number must be: at least ``least`` (None: any), whole or not, and at
    most ``most``.
    """

    least: int | None
    whole: bool
    #: By default the year 9999 in milliseconds: past it, a time is no date a record holds,
    #: and a number past a float's range fails Dramatiq's arithmetic (a time limit's deadline).
    most: int = LATEST_DUE_MILLIS


#: Options a message may set for itself, as Dramatiq's middleware read them.
NUMERIC_OPTIONS: dict[str, NumberRule] = {
    "max_retries": NumberRule(0, True),
    "min_backoff": NumberRule(0, False),
    "max_backoff": NumberRule(0, False),
    "time_limit": NumberRule(1, False),
    "max_age": NumberRule(1, False),
}

#: An AMQP priority is one octet: a retry publishes the message with it again.
PRIORITY_RULE = NumberRule(0, True, 255)

#: The options the middleware read from a delivered message, as :func:`numeric_option_problem`
#: checks them: the counts (whole, 0 or more), the times (Unix milliseconds) and the AMQP
#: priority, and those a sender may set.
RECEIVED_OPTIONS: dict[str, NumberRule] = {
    RETRIES_OPTION: NumberRule(0, True),
    REDELIVERIES_OPTION: NumberRule(0, True),
    ETA_OPTION: NumberRule(None, False),
    RETRY_DUE_OPTION: NumberRule(None, False),
    RATE_WAIT_OPTION: NumberRule(None, False),
    BROKER_PRIORITY_OPTION: PRIORITY_RULE,
    **NUMERIC_OPTIONS,
}

#: The options of a pipeline's next message: those a sender may set, its priority, and the
#: delay Dramatiq's Pipelines middleware sends it with.
NEXT_MESSAGE_OPTIONS: dict[str, NumberRule] = {
    **NUMERIC_OPTIONS,
    BROKER_PRIORITY_OPTION: PRIORITY_RULE,
    "delay": NumberRule(None, False),
}

#: The fields of a message and the types Dramatiq's middleware rely on.
FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("actor_name", str, "text"),
    ("args", (list, tuple), "a list"),
    ("kwargs", dict, "an object"),
    ("options", dict, "an object"),
    ("message_timestamp", int, "a whole number of milliseconds"),
)

#: Dramatiq's callbacks: the actors sent the message and its result, its error, or its retries
#: once they ran out.
CALLBACK_OPTIONS = ("on_success", "on_failure", "on_retry_exhausted")
#: Dramatiq's pipelines: the message sent next with the result, and whether it takes it.
PIPE_TARGET_OPTION = "pipe_target"
PIPE_IGNORE_OPTION = "pipe_ignore"
#: The options that compose a message with others (its callbacks and its pipeline's next step).
_COMPOSITION_OPTIONS = frozenset({*CALLBACK_OPTIONS, PIPE_TARGET_OPTION, PIPE_IGNORE_OPTION})
#: The fields a pipeline's next message is made of (``Message.asdict()``), and those it needs.
MESSAGE_FIELDS = frozenset(field.name for field in dataclasses.fields(dramatiq.Message))
NEEDED_FIELDS = MESSAGE_FIELDS - {"message_id", "message_timestamp"}


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    if isinstance(value, float):
        return math.isfinite(value)
    # Not math.isfinite: an int past a float's range (10**400) would raise OverflowError.
    return isinstance(value, int) and not isinstance(value, bool)


def numeric_option_problem(options: Mapping[str, Any], rules: Mapping[str, NumberRule] = NUMERIC_OPTIONS) -> str | None:
    """What is wrong with the first option of ``rules`` in ``options`` that is not the number
    its rule says (see :data:`NUMERIC_OPTIONS`), or None; an option read from the settings is
    checked there.
    """
    present = options.keys() & rules.keys()
    # Looked at in the rules' order, which decides the problem named when there are several.
    for name in present if len(present) < 2 else [name for name in rules if name in present]:
        least, whole, most = rules[name]
        value = options.get(name)
        if value is None or isinstance(value, FromSettings):
            continue
        if not is_number(value) or (whole and not isinstance(value, int)) or (least is not None and value < least):
            kind = "a whole number" if whole else "a number"
            at_least = "" if least is None else f" of {least} or more"
            return f"option {name} {shown(value)} is not {kind}{at_least}"
        if value > most:
            return f"option {name} {shown(value)} is larger than {most:,}"
    return None


def malformed(message: Any, delivered_from: str) -> str | None:
    """What makes a decoded message delivered from queue ``delivered_from`` unusable (a field
    of the wrong type, as another service may publish it), or None. Its options are checked
    too, each as the middleware read it, and the callbacks and next messages they name (see
    :func:`composition_problem`).

    Its ``queue_name`` must be that queue's: Dramatiq acknowledges a job on the consumer its
    message names, which for another queue is not the one holding the delivery (or none).
    """
    problem = _any_message_problem(message)
    if problem is not None:
        return problem
    if message.queue_name != delivered_from:
        return f"queue_name {shown(message.queue_name)} is not the queue it was delivered from, {delivered_from!r}"
    if message.message_timestamp > LATEST_DUE_MILLIS:
        return f"message_timestamp {shown(message.message_timestamp)} is past the year 9999"
    return numeric_option_problem(message.options, RECEIVED_OPTIONS) or composition_problem(message.options)


def _any_message_problem(message: Any) -> str | None:
    """What no message may be, sent or delivered: a field of the wrong type, or an actor's name
    no AMQP message carries (its ``type``, a short string), which no actor can have either.
    """
    problem = _field_problem(lambda field: getattr(message, field, None))
    if problem is None and not is_short_text(message.actor_name):
        problem = f"actor_name {shown(message.actor_name)} is not {SHORT_TEXT}"
    return problem


def check_fields(message: dramatiq.Message[Any]) -> None:
    """Refuse a message built by hand (``dramatiq.Message(...)``, as another service's actor is
    sent by name) with a field no worker could read or no AMQP message carry: of the wrong
    type, an actor's or queue's name too long, a timestamp no record or AMQP property holds, or
    an id that is not a job id, which every worker dead-letters. Checked before anything else
    reads the message, as the sender's record does.

    Raises:
      InvalidMessage: Naming the field and its value.
    """
    problem = _any_message_problem(message) or queue_name_problem(message.queue_name)
    if problem is None and not 0 <= message.message_timestamp <= LATEST_DUE_MILLIS:
        problem = f"message_timestamp {shown(message.message_timestamp)} is not a time between 1970 and the year 9999"
    if problem is None and not is_job_id(message.message_id):
        problem = f"message_id {shown(message.message_id)} is not a job id (leave it out: each message gets one)"
    if problem is not None:
        raise InvalidMessage(f"{shown(message.actor_name)}: {problem}")


def _field_problem(value_of: Callable[[str], Any]) -> str | None:
    """What is wrong with the first field of :data:`FIELD_TYPES` whose value (``value_of(name)``)
    is not of its type, or None.
    """
    for field, kind, described in FIELD_TYPES:
        value = value_of(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{field} {shown(value)} is not {described}"
    return None


def composition_problem(options: Mapping[str, Any]) -> str | None:
    """What is wrong with the callbacks ``options`` name and the messages of the pipeline they
    lead on to, step by step, as Dramatiq's Callbacks and Pipelines middleware read them after
    the job ran; or None.
    """
    if options.keys().isdisjoint(_COMPOSITION_OPTIONS):
        return None
    step = 1
    while True:
        where = "" if step == 1 else f"step {step} of the pipeline: "
        for name in CALLBACK_OPTIONS:
            value = options.get(name)
            if value is not None and not (isinstance(value, str) and value):
                return f"{where}option {name} {shown(value)} is not an actor's name"
        ignore = options.get(PIPE_IGNORE_OPTION)
        if ignore is not None and not isinstance(ignore, bool):
            return f"{where}option {PIPE_IGNORE_OPTION} {shown(ignore)} is not true or false"
        target = options.get(PIPE_TARGET_OPTION)
        if target is None:
            return None
        step += 1
        problem = _next_message_problem(target)
        if problem is not None:
            return f"step {step} of the pipeline ({PIPE_TARGET_OPTION}): {problem}"
        options = target["options"]


def _next_message_problem(target: object) -> str | None:
    """What keeps ``target`` from being a pipeline's next message, or None."""
    if not isinstance(target, dict) or not NEEDED_FIELDS <= target.keys() <= MESSAGE_FIELDS:
        return f"{shown(target)} is not a message (an object of {', '.join(sorted(MESSAGE_FIELDS))})"
    if not isinstance(target["queue_name"], str):
        return f"queue_name {shown(target['queue_name'])} is not text"
    # A next message without a timestamp gets one when it is built.
    problem = _field_problem(lambda field: target.get(field, 0))
    if problem is not None:
        return problem
    if "message_id" in target and not is_job_id(target["message_id"]):
        return f"message_id {shown(target['message_id'])} is not a job id"
    return numeric_option_problem(target["options"], NEXT_MESSAGE_OPTIONS)


def callback_problem(
    actors: Mapping[str, dramatiq.Actor[Any, Any]], message: dramatiq.Message[Any], *, worker: bool
) -> str | None:
    """What keeps an actor ``message``'s callbacks name (its own options, else its actor's)
    from taking the message and its result, or None: one whose signature cannot take two
    arguments, and, in a ``worker`` (which sends them), one no module it imports declares.
    A sender cannot know the actors of another service: it checks those it declares.
    """
    actor = actors.get(message.actor_name)
    for name in CALLBACK_OPTIONS:
        callback_name = message.options.get(name) or (actor.options.get(name) if actor is not None else None)
        if not callback_name:
            continue
        if not isinstance(callback_name, str):
            return f"option {name} {shown(callback_name)} is not an actor's name"
        callback = actors.get(callback_name)
        if callback is None:
            if worker:
                return f"option {name} names actor {shown(callback_name)}, which no module this worker imports declares"
            continue
        try:
            signature_of(callback.fn).bind({}, None)
        except TypeError as exc:
            return f"option {name} names actor {callback_name!r}, which cannot take the message and its result ({exc})"
    return None


def signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature, read once per function (reading one costs more than the rest of a
    message's checks); each time for a callable that cannot be a cache's key.
    """
    try:
        return _signature_once(fn)
    except TypeError:  # unhashable
        return inspect.signature(fn)


_signature_once = functools.lru_cache(maxsize=256)(inspect.signature)


def check_delay(delay: object, now_millis: int) -> None:
    """Refuse a send's ``delay`` that is not a number of milliseconds, or that makes the job due
    past the year 9999; a negative one is due at once, as with Dramatiq.

    Raises:
      InvalidMessage: It is refused; the message names it.
    """
    if not is_number(delay):
        raise InvalidMessage(f"delay {shown(delay)} is not a number of milliseconds (or a timedelta)")
    if now_millis + delay > LATEST_DUE_MILLIS:  # type: ignore[operator]
        raise InvalidMessage(f"delay {shown(delay)} ms makes the job due past the year 9999")


def eta_delay(message: dramatiq.Message[Any], now_millis: int) -> int | None:
    """The delay, from ``now_millis``, that a sent message's own ``eta`` asks for: Dramatiq's
    option for a delayed message's due time (Unix milliseconds), which a caller may set instead
    of a delay. None when the message has none.

    Raises:
      InvalidMessage: The ``eta`` is not a number, or is past the year 9999; the message names it.
    """
    eta = message.options.get(ETA_OPTION)
    if eta is None:
        return None
    problem = numeric_option_problem({ETA_OPTION: eta}, {ETA_OPTION: RECEIVED_OPTIONS[ETA_OPTION]})
    if problem is not None:
        raise InvalidMessage(f"{message.actor_name}: {problem}")
    return int(eta) - now_millis


def _check_options(broker: dramatiq.Broker, actor_name: str, queue_name: str, options: dict[str, Any]) -> None:
    """Refuse options a message sets for itself that no worker could follow: a number that is
    not one, and a ``time_limit`` longer than any its queue's actors declare, which the workers'
    consumer-timeout check is measured against (see :mod:`pipeline.jobs.holds`).
    """
    problem = numeric_option_problem(options) or composition_problem(options)
    if problem is not None:
        raise Refusal(InvalidMessage(f"{actor_name}: {problem}"))
    if options.get("time_limit") is not None:
        # No problem where no time limit applies on this broker (or no actor of the queue is
        # declared here): none is checked either.
        problem = run_limit(broker, queue_name).problem(options, actor_name, None)
        if problem is not None:
            raise Refusal(InvalidMessage(f"{actor_name}: {problem}: declare the longer limit on the actor"))


def _check_callbacks(broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
    """Refuse callbacks that name an actor declared here that cannot take the message and its
    result: the job would run, and its callback fail after it.
    """
    problem = callback_problem(broker.actors, message, worker=False)
    if problem is not None:
        raise Refusal(InvalidMessage(f"{message.actor_name}: {problem}"))


class MessageChecks(Middleware):
    """Refuses, in the sender, a message that could never run; nothing is queued or recorded.

    Every message's arguments are bound to its actor's signature (an unknown or missing
    argument) and must be JSON values (no NaN); then ``@actor(check=function)`` makes ``send()``
    call ``function(*args, **kwargs)``, and a :class:`~pipeline.errors.PermanentError` it raises
    refuses the message too. The sender gets :class:`~pipeline.errors.InvalidMessage` naming
    the problem, so bad input fails at once, in the caller, rather than later in a worker. A
    message sent by name to an actor this process does not declare (another service's) has its
    arguments and options checked alone.
    """

    @property
    def actor_options(self) -> set[str]:
        """Declares ``check``, and ``shown_arguments`` (the keyword arguments whose values the
        dashboard may show).
        """
        return {CHECK_OPTION, SHOWN_ARGUMENTS_OPTION}

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Refuse a declaration no worker could follow, where it is made: a numeric option that
        is not a number (``time_limit="5m"``), a ``check`` that is not a function.

        Raises:
          InvalidActor: Through :class:`Refusal`; the message names the actor and the option.
        """
        problem = None if is_short_text(actor.actor_name) else f"the name is not {SHORT_TEXT}"
        problem = problem or queue_name_problem(actor.queue_name) or numeric_option_problem(actor.options)
        check = actor.options.get(CHECK_OPTION)
        if problem is None and check is not None and not callable(check):
            problem = f"option check {shown(check)} is not a function"
        if problem is not None:
            raise Refusal(InvalidActor(f"actor {actor.actor_name!r}: {problem}"))

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Check a newly sent message (retries were checked when first sent)."""
        if not is_retry(message):
            self.check(broker, message)

    def check(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        """Refuse ``message`` if it could never run (see the class).

        Raises:
          Refusal: Carrying the :class:`~pipeline.errors.InvalidMessage` that names the problem.
        """
        # None for another service's actor, sent by name (a pipeline's next step, say): its
        # signature and its check are that service's, and only what any message must be is
        # checked here.
        actor = broker.actors.get(message.actor_name)
        if actor is not None:
            try:
                signature_of(actor.fn).bind(*message.args, **message.kwargs)
            except TypeError as exc:
                raise Refusal(InvalidMessage(f"{actor.actor_name}: {exc}")) from None
        queue_name = q_name(message.queue_name) if actor is None else actor.queue_name
        # The options the middleware read first, each refused with what it must be.
        _check_options(broker, message.actor_name, queue_name, message.options)
        _check_json(message.actor_name, message.args, message.kwargs, message.options)
        _check_callbacks(broker, message)
        check = None if actor is None else actor.options.get(CHECK_OPTION)
        if check is None:
            return
        try:
            check(*message.args, **message.kwargs)
        except PermanentError as exc:
            refusal = InvalidMessage(f"{message.actor_name}: {exc}")
            refusal.__cause__ = exc
            raise Refusal(refusal) from exc


#: JSON as a message body holds it, without NaN or infinities, its text left as it is (made once:
#: ``json.dumps`` with an option builds a new encoder on every call).
_STRICT_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def _check_json(actor_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
    """Refuse arguments, or options, that are not JSON values, naming the first such one: the
    message's body could not be written (or read by another service's decoder, for a NaN).

    Text must be Unicode that UTF-8 can encode: a lone surrogate (what ``surrogateescape``
    leaves of undecodable bytes) passes JSON's escapes, but fails wherever a worker writes the
    text out (a mail, a workbook, a log), so it is refused here, at send.
    """
    try:
        _STRICT_JSON.encode([args, kwargs, options]).encode("utf-8")
        return
    except (TypeError, ValueError, RecursionError):
        pass
    named = [(f"argument {n + 1}", value) for n, value in enumerate(args)] + [(repr(k), v) for k, v in kwargs.items()]
    named += [(f"option {k}", v) for k, v in options.items()]
    for name, value in named:
        try:
            _STRICT_JSON.encode(value).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Refusal(
                InvalidMessage(
                    f"{actor_name}: {name} holds {not_text(exc)}; decode the bytes it came from with errors='replace'"
                )
            ) from None
        except (TypeError, ValueError, RecursionError) as exc:
            # RecursionError: nested deeper than any encoder (or a worker's decoder) goes.
            raise Refusal(InvalidMessage(f"{actor_name}: {name} is not a JSON value ({exc})")) from None
    # Every value is one: a key is not text (JSON's object keys are).
    raise Refusal(InvalidMessage(f"{actor_name}: the keyword arguments or options have a key that is not text"))

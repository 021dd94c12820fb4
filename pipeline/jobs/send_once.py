"""Sends that happen once: a send with an idempotency key publishes only if no send with the
same key (and actor) did within ``PIPELINE_IDEMPOTENCY_WINDOW``; otherwise it returns the first
job's id. A web request retried by its client, or a button clicked twice, sends one mail.

The first send takes the key (see :mod:`pipeline.store.send_keys`) and publishes. A send that
finds the key taken waits until the first job's record exists (``QUEUED`` once its send
returned) and returns that job's id. A key whose job never got a record within
``PIPELINE_IDEMPOTENCY_TAKEOVER`` seconds of being taken (its sender died between the two) is
taken over by one later send, which publishes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq

from pipeline.errors import InvalidIdempotencyKey, PublishOutcomeUnknown, shown
from pipeline.settings import Settings
from pipeline.states import JobState
from pipeline.store.connection import get_redis
from pipeline.store.records import get_store
from pipeline.store.send_keys import SendKeys

T = TypeVar("T")

#: Characters an idempotency key holds at most.
MAX_KEY_LENGTH = 200
#: Seconds between two looks for the first job's record while its send is under way.
LOOK_EVERY = 0.02


def check_idempotency_key(key: object) -> str:
    """``key`` if it can be an idempotency key: text of 1 to 200 printable characters.

    Raises:
      InvalidIdempotencyKey: It cannot.
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidIdempotencyKey(
            f"idempotency_key must be text of 1 to {MAX_KEY_LENGTH} printable characters, not {shown(key)}"
        )
    return key


def claim(
    message: dramatiq.Message[Any], key: str, settings: Settings
) -> tuple[dramatiq.Message[Any] | None, Callable[[], None]]:
    """Take ``key`` for ``message``'s job, or find the job a send with it went to.

    Returns:
      ``(None, release)`` when ``message`` is to be published (``release`` gives the key back
      if it is not), or ``(message with the first job's id, a no-op)`` when another send came
      first.

    Raises:
      InvalidIdempotencyKey: ``key`` cannot be one.
      ResultBackendUnavailable: Redis failed.
    """
    check_idempotency_key(key)
    keys, store = SendKeys(get_redis(settings)), get_store(settings)
    actor_name = message.actor_name
    while True:
        holder, mine = keys.take(actor_name, key, message.message_id)
        if holder is None:
            return None, functools.partial(keys.release, actor_name, key, mine)
        if store.state(holder.message_id) is not JobState.PENDING:
            return message.copy(message_id=holder.message_id), _kept
        if time.time() - holder.claimed_at >= settings.idempotency_takeover:
            if keys.take_over(actor_name, key, holder, mine):
                return None, functools.partial(keys.release, actor_name, key, mine)
            continue
        time.sleep(LOOK_EVERY)


def send_once(
    message: dramatiq.Message[Any],
    key: str,
    publish: Callable[[dramatiq.Message[Any]], dramatiq.Message[Any]],
    settings: Settings,
) -> dramatiq.Message[Any]:
    """Publish ``message`` with ``publish`` unless a send with ``key`` already did.

    Returns:
      The message as published, or, when a send with the same key came first, ``message``
      with that send's job id.

    Raises:
      InvalidIdempotencyKey: ``key`` cannot be one.
      ResultBackendUnavailable: Redis failed: nothing was published.
    """
    first, release = claim(message, key, settings)
    if first is not None:
        return first
    return publish_or_release(lambda: publish(message), release)


def _kept() -> None:
    """Nothing to give back: the key is another send's."""


def publish_or_release(publish: Callable[[], T], release: Callable[[], None]) -> T:
    """``publish()``; give the keys back (``release``) when RabbitMQ surely does not have it."""
    try:
        return publish()
    except PublishOutcomeUnknown:
        raise
    except BaseException:
        release()
        raise

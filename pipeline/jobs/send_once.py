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
from typing import Any

import dramatiq

from pipeline.errors import InvalidIdempotencyKey, PublishOutcomeUnknown, shown
from pipeline.settings import Settings
from pipeline.states import JobState
from pipeline.store.connection import get_redis
from pipeline.store.records import get_store
from pipeline.store.send_keys import SendKeys

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
    check_idempotency_key(key)
    keys, store = SendKeys(get_redis(settings)), get_store(settings)
    actor_name = message.actor_name
    while True:
        holder, mine = keys.take(actor_name, key, message.message_id)
        if holder is None:
            return _publish(message, publish, functools.partial(keys.release, actor_name, key, mine))
        if store.state(holder.message_id) is not JobState.PENDING:
            return message.copy(message_id=holder.message_id)
        if time.time() - holder.claimed_at >= settings.idempotency_takeover:
            if keys.take_over(actor_name, key, holder, mine):
                return _publish(message, publish, functools.partial(keys.release, actor_name, key, mine))
            continue
        time.sleep(LOOK_EVERY)


def _publish(
    message: dramatiq.Message[Any],
    publish: Callable[[dramatiq.Message[Any]], dramatiq.Message[Any]],
    release: Callable[[], None],
) -> dramatiq.Message[Any]:
    """Publish; give the key back when RabbitMQ surely does not have the message."""
    try:
        return publish(message)
    except PublishOutcomeUnknown:
        raise
    except BaseException:
        release()
        raise

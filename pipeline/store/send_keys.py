"""Idempotency keys of sends: the job a key went to, so that a second send with it publishes
nothing and returns the first job's id.

A sender takes a key with one ``SET NX GET``: it gets the key, or learns whose it is. A key
names its job's message id and when it was taken. A sender that dies between taking the key
and publishing leaves a key whose job never reaches ``QUEUED``: once it is
``PIPELINE_IDEMPOTENCY_TAKEOVER`` seconds old, a later send takes it over, atomically, so that
only one of several such sends does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, cast

from pipeline.store.connection import RedisConnection

#: Replaces a key's value (KEYS[1]) with ARGV[2] if it still holds ARGV[1]; 1 when it did.
TAKE_OVER_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""
#: Deletes a key (KEYS[1]) if it still holds ARGV[1]; 1 when it did.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


@dataclasses.dataclass(frozen=True)
class KeyHolder:
    """Whose a key is: the job's message id, when the key was taken, and the stored text."""

    message_id: str
    claimed_at: float
    raw: str

    @classmethod
    def parse(cls, raw: str) -> KeyHolder:
        """The holder a key's stored text names."""
        value = json.loads(raw)
        return cls(str(value["message_id"]), float(value["claimed_at"]), raw)


class SendKeys:
    """The idempotency keys of one deployment's sends.

    Parameters:
      redis: The Redis of the records; its settings give the window.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis

    def _key(self, actor_name: str, key: str) -> str:
        return self.redis.keys.send_key(actor_name, hashlib.sha256(key.encode()).hexdigest())

    @staticmethod
    def _value(message_id: str) -> str:
        return json.dumps({"message_id": message_id, "claimed_at": time.time()})

    def take(self, actor_name: str, key: str, message_id: str) -> tuple[KeyHolder | None, str]:
        """Take ``key`` for ``message_id``'s job, if nobody holds it.

        Returns:
          The holder when another send holds the key (None when it is now ``message_id``'s),
          and the text stored for ``message_id`` (for :meth:`take_over` and :meth:`release`).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        mine = self._value(message_id)
        window = self.redis.settings.idempotency_window
        with self.redis.translated():
            held = self.redis.client.set(self._key(actor_name, key), mine, nx=True, ex=window, get=True)
        return (None if held is None else KeyHolder.parse(cast("str", held))), mine

    def take_over(self, actor_name: str, key: str, holder: KeyHolder, mine: str) -> bool:
        """Replace ``holder`` with ``mine`` if the key still names it; whether it did.

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        with self.redis.translated():
            replaced: Any = self.redis.client.eval(TAKE_OVER_SCRIPT, 1, self._key(actor_name, key), holder.raw, mine)
        return bool(replaced)

    def release(self, actor_name: str, key: str, mine: str) -> None:
        """Give the key back if it is still ``mine`` (its send did not publish).

        Raises:
          ResultBackendUnavailable: Redis failed.
        """
        with self.redis.translated():
            self.redis.client.eval(RELEASE_SCRIPT, 1, self._key(actor_name, key), mine)

"""What an AMQP short-string property may hold: the one rule the settings and the send checks share.

pipeline publishes every message with the service's name as its ``app_id`` and the actor's
name as its ``type``; AMQP carries each as a short string, and pika refuses one over 255 bytes
at the publish itself. Text a person reads in the management UI and the logs, so printable too.
"""

from __future__ import annotations

#: What the rule asks, for error messages.
SHORT_TEXT = "printable text of 1 to 255 bytes"
#: The longest AMQP short string, in bytes of UTF-8.
MAX_SHORT_BYTES = 255


def is_short_text(value: object) -> bool:
    """Whether ``value`` is printable text of 1 to 255 UTF-8 bytes."""
    return (
        isinstance(value, str)
        and value.isprintable()
        and 0 < len(value.encode("utf-8", "surrogatepass")) <= MAX_SHORT_BYTES
    )

"""What an AMQP short string may hold: the one rule the settings and the send checks share.

pipeline publishes every message with the service's name as its ``app_id`` and the actor's
name as its ``type``, to a queue named in a short string too; AMQP carries each as a short
string, and pika refuses one over 255 bytes at the publish or the declare itself. Text a person
reads in the management UI and the logs, so printable too.
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


#: The longest name of a queue: RabbitMQ's queue names are short strings, and Dramatiq names a
#: queue's delay and dead-letter queues after it (``.DQ``, ``.XQ``).
MAX_QUEUE_NAME = MAX_SHORT_BYTES - len(".DQ")


def queue_name_problem(name: object) -> str | None:
    """What keeps ``name`` from naming a queue with its ``.DQ`` and ``.XQ``, or None."""
    if not isinstance(name, str) or not name:
        return f"queue name {name!r} is not text"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_QUEUE_NAME:
        return f"queue name of {size} bytes is longer than {MAX_QUEUE_NAME} (its .DQ and .XQ are short strings too)"
    return None

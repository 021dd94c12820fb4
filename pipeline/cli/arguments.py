"""The kinds of value the command's options take, checked as argparse reads them: a value of
the wrong kind is a usage error that names the option, before anything is done.
"""

from __future__ import annotations

import argparse
import math

from pipeline.amqp_text import SHORT_TEXT, is_short_text


def count(text: str) -> int:
    """A number of things: a whole number, 1 or more (``--limit``, ``--orders``)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def seconds(text: str) -> float:
    """A number of seconds, 0 or more (not NaN, which no wait would end)."""
    value = float(text)
    if math.isnan(value) or value < 0:
        raise ValueError(text)
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535: the socket layer takes a larger one modulo 65536."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def actor_name(text: str) -> str:
    """An actor's name, as an actor is declared with: printable text of 1 to 255 bytes (an empty
    one, from an unset variable, named no actor and matched nothing).

    Raises:
      argparse.ArgumentTypeError: Naming the value and the rule.
    """
    if not is_short_text(text):
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not an actor name ({SHORT_TEXT})")
    return text

"""A sending service in a process of its own: sends jobs and prints what became of each send.

    python tests/support/sender.py ACTOR COUNT [ARGUMENT]

Prints one JSON line: ``sent`` (message ids), ``seconds`` (how long each send took) and
``errors`` (the error of each send that raised, by position). The settings come from the
environment, so a test points it at the services it wants.
"""

from __future__ import annotations

import json
import sys
import time

import sample_actors

import pipeline.actors


def main() -> None:
    """Send COUNT messages to ACTOR and print the outcome."""
    name, count = sys.argv[1], int(sys.argv[2])
    argument = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    actor = getattr(sample_actors, name, None) or getattr(pipeline.actors, name)
    sent, seconds, errors = [], [], {}
    for n in range(count):
        started = time.monotonic()
        try:
            sent.append(actor.send(argument if argument is not None else n).message_id)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
            errors[n] = f"{type(exc).__name__}: {exc}"
        seconds.append(time.monotonic() - started)
    print(json.dumps({"sent": sent, "seconds": seconds, "errors": errors}))


if __name__ == "__main__":
    main()

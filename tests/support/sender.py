"""A sending service in a process of its own: sends jobs and prints what became of each send.

    python tests/support/sender.py ACTOR COUNT [--prefix TEXT] [--pause SECONDS] [--many BATCH]
                                                 [--delay MILLISECONDS]

The n-th call sends ``n`` (or ``TEXT`` + n with ``--prefix``). Prints one JSON line: ``sent``
(the message id of each send, None where it raised), ``seconds`` (how long each send took) and
``errors`` (the error type and message of each send that raised, by position). With ``--many``,
the calls go in one ``send_many`` of batches of BATCH: ``seconds`` holds how long it took, and
``errors`` its error at position 0. With ``--delay``, each message is sent with that delay. The settings come
from the environment, so a test points it at the services it wants.
"""

from __future__ import annotations

import argparse
import json
import time

import sample_actors

import pipeline.actors
from pipeline.errors import PublishOutcomeUnknown


def main() -> None:
    """Send COUNT messages to ACTOR and print the outcome."""
    parser = argparse.ArgumentParser()
    parser.add_argument("actor")
    parser.add_argument("count", type=int)
    parser.add_argument("--prefix")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--many", type=int)
    parser.add_argument("--delay", type=int)
    args = parser.parse_args()
    actor = getattr(sample_actors, args.actor, None) or getattr(pipeline.actors, args.actor)
    sent: list[str | None] = []
    seconds: list[float] = []
    errors: dict[int, str] = {}
    if args.many:
        calls = [((n if args.prefix is None else f"{args.prefix}{n}",), {}) for n in range(args.count)]
        started = time.monotonic()
        try:
            sent = [message.message_id for message in actor.send_many(calls, batch_size=args.many)]
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
            errors[0] = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"sent": sent, "seconds": [time.monotonic() - started], "errors": errors}))
        return
    for n in range(args.count):
        started = time.monotonic()
        try:
            argument = n if args.prefix is None else f"{args.prefix}{n}"
            sent.append(actor.send_with_options(args=(argument,), delay=args.delay).message_id)
        except PublishOutcomeUnknown as exc:
            sent.append(exc.message_id)
            errors[n] = f"PublishOutcomeUnknown: {exc}"
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
            sent.append(None)
            errors[n] = f"{type(exc).__name__}: {exc}"
        seconds.append(time.monotonic() - started)
        time.sleep(args.pause)
    print(json.dumps({"sent": sent, "seconds": seconds, "errors": errors}))


if __name__ == "__main__":
    main()

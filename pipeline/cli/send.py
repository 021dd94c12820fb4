"""``pipeline export`` and ``pipeline email``: send a job from the shell, print its id, and with
``--wait`` follow it to its end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.cli.exit_codes import RET_OK
from pipeline.cli.status import show_job
from pipeline.errors import InvalidMessage, shown
from pipeline.export.sources import FILE_FORMATS


def _sent(message_id: str, args: argparse.Namespace) -> int:
    if args.wait:
        return show_job(message_id, as_json=args.json, live=True)
    print(json.dumps({"message_id": message_id}) if args.json else message_id)
    return RET_OK


def run_export(args: argparse.Namespace) -> int:
    """``pipeline export``."""
    from pipeline.actors import export_orders

    kwargs: dict[str, Any] = {"file": args.file}
    # An option given empty (an empty shell variable) is refused (here, or by the actor's
    # check), not read as left out: that would export every column, name the file "orders",
    # or mail no one, and exit 0.
    if args.columns is not None:
        kwargs["columns"] = [name.strip() for given in args.columns for name in given.split(",") if name.strip()]
        if not kwargs["columns"]:
            raise InvalidMessage(f"--columns names no column in {shown(' '.join(args.columns))}: leave it out for all")
    if args.notify is not None:
        kwargs["notify"] = args.notify
    if args.name is not None:
        kwargs["name"] = args.name
    message = export_orders.send(priority=args.priority, idempotency_key=args.idempotency_key, **kwargs)
    return _sent(message.message_id, args)


#: The largest ``--context`` file read, in bytes.
CONTEXT_FILE_LIMIT = 16 * 2**20


def context_argument(text: str) -> dict[str, Any]:
    """A mail's context from ``--context``: a JSON object, or ``@path`` to a file holding one.

    Raises:
      InvalidMessage: The file cannot be read, is larger than :data:`CONTEXT_FILE_LIMIT` (or
        endless, as ``/dev/zero``), is not UTF-8, or the text is not a JSON object.
    """
    source = "--context"
    if text.startswith("@"):
        source = text[1:]
        try:
            with Path(source).open("rb") as file:
                data = file.read(CONTEXT_FILE_LIMIT + 1)
        except OSError as exc:
            raise InvalidMessage(f"--context file {source!r} cannot be read: {exc.strerror}") from exc
        if len(data) > CONTEXT_FILE_LIMIT:
            raise InvalidMessage(
                f"--context file {source!r} is larger than {CONTEXT_FILE_LIMIT // 2**20} MiB: a context holds a "
                "mail's variables, not data"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"--context file {source!r} is not UTF-8 text (byte {exc.start:,})") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidMessage(f"{source} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidMessage(f"{source} is JSON nested too deep to read") from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"{source} must be a JSON object, not {type(value).__name__}")
    return value


def run_email(args: argparse.Namespace) -> int:
    """``pipeline email``."""
    from pipeline.actors import send_email

    context = context_argument(args.context) if args.context else {}
    message = send_email.send(
        to=args.to,
        template=args.template,
        context=context,
        priority=args.priority,
        idempotency_key=args.idempotency_key,
    )
    return _sent(message.message_id, args)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", type=int, metavar="N", help="RabbitMQ priority, higher is sooner")
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="send once: a second send with the same key within PIPELINE_IDEMPOTENCY_WINDOW prints the first job's id",
    )
    parser.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    parser.add_argument("--json", action="store_true", help="print the id (or, with --wait, the record) as JSON")


def add_parsers(commands: Any) -> None:
    """Add ``export`` and ``email`` to the command's subparsers."""
    export = commands.add_parser(
        "export",
        help="export an order file of the import folder to Excel",
        description="Send an export of FILE (under PIPELINE_IMPORT_DIR) and print the job's id. Exit 0: sent "
        "(with --wait: succeeded); 1: failed; 5: refused or RabbitMQ unreachable.",
    )
    export.add_argument("file", help=f"the order file, relative to the import folder ({', '.join(FILE_FORMATS)})")
    export.add_argument(
        "--columns", nargs="+", metavar="COLUMN", help="the order columns to keep (names, or one comma-separated list)"
    )
    export.add_argument("--notify", metavar="EMAIL", help="mail this address a link when the file is ready")
    export.add_argument("--name", help="the file name's stem (default: orders)")
    _common(export)
    export.set_defaults(handler=run_export)

    email = commands.add_parser(
        "email",
        help="send a templated mail",
        description="Send TEMPLATE to TO and print the job's id. Exit 0: sent (with --wait: delivered); "
        "1: failed; 5: refused or RabbitMQ unreachable.",
    )
    email.add_argument("to", help="the recipient's address")
    email.add_argument("template", help="the template's name (NAME.txt and NAME.html)")
    email.add_argument("--context", metavar="JSON|@FILE", help="the template's variables: a JSON object or @file.json")
    _common(email)
    email.set_defaults(handler=run_email)

"""``pipeline web``: the dashboard, served standalone (needs the ``web`` extra)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from pipeline.cli.arguments import port
from pipeline.cli.exit_codes import RET_ERROR, RET_OK
from pipeline.settings import get_settings


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted."""
    try:
        from werkzeug.serving import make_server

        from pipeline.web import make_app
        from pipeline.web.access import settings_authorize
    except ImportError as exc:
        print(f"the dashboard needs the web extra: pip install 'pipeline[web]' ({exc})")
        return RET_ERROR
    import pipeline.actors  # noqa: F401 - the actors' options say which arguments may be shown

    settings = get_settings()
    authorize = settings_authorize(settings, args.host)
    app = make_app(authorize=authorize, writes=settings.web_writes, settings=settings)
    server = make_server(args.host, args.port, app, threaded=True)
    mode = "with write actions" if settings.web_writes else "read-only"
    print(f"pipeline dashboard on http://{args.host}:{server.server_port}/ ({mode})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return RET_OK


def add_parser(commands: Any) -> None:
    """Add ``web`` to the command's subparsers."""
    web = commands.add_parser("web", help="serve the web dashboard (jobs, queues, workers, dead letters)")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=port, default=8080, help="port, 0 to 65535 (default 8080; 0 picks a free one)")
    web.set_defaults(handler=run)

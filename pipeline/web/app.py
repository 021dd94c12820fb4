"""The dashboard as one WSGI application: standalone (``pipeline web``) or mounted in a service's
app (Flask through Werkzeug's ``DispatcherMiddleware``, FastAPI through ``a2wsgi``).

Pages are Jinja2 templates with autoescape on, so every value a record holds is shown as text;
the one script is ``static/live.js`` (no inline script: the Content-Security-Policy forbids it),
which keeps a page's live part current from server-sent events, or by polling where they do not
get through.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from pipeline.dead_letters import MORE_REMAIN, DeadLetters, dead_letter_queues
from pipeline.errors import PipelineError
from pipeline.jobs.options import SHOWN_ARGUMENTS_OPTION
from pipeline.printable import printable
from pipeline.settings import Settings, get_settings
from pipeline.states import JobState, state_named
from pipeline.store.records import get_store
from pipeline.web import queries
from pipeline.web.access import CSRF_COOKIE, CSRF_FIELD, Authorize, Role, caller_of, csrf_passes, new_csrf_token
from pipeline.web.actions import ActionRefused, Actions

#: Every page's security headers: no inline script, no framing, no referrer, no caching.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
#: The static files served, by name.
STATIC = {"live.js": "text/javascript", "style.css": "text/css"}
#: Seconds between two looks of a live stream; seconds a stream lasts before the browser reconnects.
LIVE_EVERY = 1.0
LIVE_FOR = 300.0
#: Dead letters shown per queue.
DEAD_SHOWN = 200


class Dashboard:
    """The dashboard's WSGI application.

    Parameters:
      prefix: The path it is served under when it is called with the full path (a mount that
        sets ``SCRIPT_NAME``, as Werkzeug's and a2wsgi's do, needs none).
      authorize: Says who makes each request (see :mod:`pipeline.web.access`).
      writes: Whether write actions are offered at all (read-only by default).
      settings: The deployment's settings; the process's when omitted.
    """

    def __init__(self, *, prefix: str, authorize: Authorize, writes: bool, settings: Settings | None) -> None:
        self.prefix = prefix.rstrip("/")
        self.authorize = authorize
        self.writes = writes
        self.settings = settings or get_settings()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("pipeline.web", "templates"),
            autoescape=True,
            undefined=jinja2.ChainableUndefined,
        )
        self.templates.filters["printable"] = printable
        self.templates.filters["safe_link"] = queries.safe_link
        self.templates.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
        self.url_map = Map(
            [
                Rule("/", endpoint="overview", methods=["GET"]),
                Rule("/jobs", endpoint="jobs", methods=["GET"]),
                Rule("/jobs/<message_id>", endpoint="job", methods=["GET"]),
                Rule("/jobs/<message_id>/<any(revoke, retry, forget):action>", endpoint="job_action", methods=["POST"]),
                Rule("/dead-letters", endpoint="dead_letters", methods=["GET"]),
                Rule("/dead-letters/requeue", endpoint="requeue", methods=["POST"]),
                Rule("/dead-letters/purge", endpoint="purge", methods=["POST"]),
                Rule("/workers", endpoint="workers", methods=["GET"]),
                Rule("/live/<any(overview, jobs, job, workers):view>", endpoint="live", methods=["GET"]),
                Rule("/static/<name>", endpoint="static", methods=["GET"]),
            ]
        )

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Answer one request (WSGI)."""
        path = environ.get("PATH_INFO", "")
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix) :] or "/"
        request = Request(environ)
        response = self.respond(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if CSRF_COOKIE not in request.cookies and response.mimetype == "text/html":
            token = request.environ.setdefault("pipeline.csrf", new_csrf_token())
            path = request.script_root or "/"
            response.set_cookie(
                CSRF_COOKIE, token, httponly=True, samesite="Strict", path=path, secure=request.is_secure
            )
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        """The response to ``request``: a page, an action's redirect, or an error page."""
        adapter = self.url_map.bind_to_environ(request.environ)
        unmatched: HTTPException | None = None
        try:
            endpoint, values = adapter.match()
        except HTTPException as exc:
            unmatched, endpoint, values = exc, "", {}
        if endpoint == "static":
            return self.static(values["name"])
        # Who asks comes first: someone not logged in learns nothing, not even which pages exist.
        caller = caller_of(self.authorize, request)
        if caller is None:
            return self.error(
                request, 401, "log in to see the dashboard", headers={"WWW-Authenticate": 'Basic realm="pipeline"'}
            )
        request.environ["pipeline.caller"] = caller
        if isinstance(unmatched, MethodNotAllowed):
            return self.error(request, 405, f"{request.method} is not allowed here", headers=unmatched.get_headers())
        if isinstance(unmatched, NotFound):
            return self.error(request, 404, "no such page")
        if unmatched is not None:
            return self.error(request, unmatched.code or 400, unmatched.description or "bad request")
        who, role = caller
        if request.method == "POST":
            if not self.writes:
                return self.error(request, 403, "the dashboard is read-only: write actions are not enabled")
            if role < Role.OPERATOR:
                return self.error(request, 403, f"{who} may look but not act")
            if not csrf_passes(request):
                return self.error(request, 403, "the form's CSRF token is missing or wrong: reload the page")
        try:
            view: Callable[..., Response] = getattr(self, f"view_{endpoint}")
            return view(request, **values)
        except (queries.BadFilter, ActionRefused) as exc:
            return self.error(request, 400, str(exc))
        except queries.NotFoundHere as exc:
            return self.error(request, 404, str(exc))
        except PipelineError as exc:
            return self.error(request, 503, f"a service did not answer: {exc}")

    # -- rendering -------------------------------------------------------------------------

    def url(self, request: Request, endpoint: str, **values: Any) -> str:
        """The path of ``endpoint`` under the dashboard's mount."""
        return str(self.url_map.bind_to_environ(request.environ).build(endpoint, values))

    def _shared(self, request: Request) -> dict[str, Any]:
        """What every template is given: links, the caller, and the CSRF field for forms."""
        caller = request.environ.get("pipeline.caller")
        token = request.cookies.get(CSRF_COOKIE) or request.environ.setdefault("pipeline.csrf", new_csrf_token())
        return {
            "url": lambda endpoint, **values: self.url(request, endpoint, **values),
            "who": caller[0] if caller else None,
            "can_act": bool(caller and caller[1] >= Role.OPERATOR and self.writes),
            "csrf_field": CSRF_FIELD,
            "csrf_token": token,
        }

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """A page."""
        body = self.templates.get_template(template).render(
            **self._shared(request), done=request.args.get("done", ""), **context
        )
        return Response(body, status=status, mimetype="text/html")

    def error(self, request: Request, status: int, message: str, headers: Any = None) -> Response:
        """An error page naming the problem (never a traceback)."""
        response = self.render(request, "error.html", status=status, status_code=status, message=message)
        for name, value in dict(headers or {}).items():
            response.headers[name] = value
        return response

    def static(self, name: str) -> Response:
        """One of the dashboard's own static files."""
        if name not in STATIC:
            return Response("no such file", status=404, mimetype="text/plain")
        body = resources.files("pipeline.web").joinpath("static", name).read_bytes()
        return Response(body, mimetype=STATIC[name], headers={"Cache-Control": "max-age=300"})

    # -- pages -----------------------------------------------------------------------------

    def _overview(self, request: Request) -> dict[str, Any]:
        store = get_store(self.settings)
        queue_rows, queue_problem = queries.queues(self.settings)
        figures, sampled = queries.actor_figures(store)
        return {
            "queues": queue_rows,
            "queue_problem": queue_problem,
            "figures": figures,
            "sampled": sampled,
            "states": [s.value for s in JobState if s is not JobState.PENDING],
            "workers": queries.workers(store),
        }

    def view_overview(self, request: Request) -> Response:
        """Queues, jobs by actor over the last hour, workers."""
        return self.render(request, "overview.html", live="overview", **self._overview(request))

    def _jobs(self, request: Request) -> dict[str, Any]:
        filters = queries.job_filters(dict(request.args))
        records, cursor = queries.job_page(get_store(self.settings), filters)
        if filters["before"] is not None and not records:
            raise queries.NotFoundHere("no jobs past this point of the list")
        query = {k: v for k, v in request.args.items() if k != "before" and v}
        next_query = urlencode({**query, "before": cursor}) if cursor is not None else None
        return {
            "records": records,
            "filters": filters,
            "query": urlencode(query),
            "next_query": next_query,
            "states": [s.value for s in JobState if s is not JobState.PENDING],
            "windows": list(queries.WINDOWS),
        }

    def view_jobs(self, request: Request) -> Response:
        """The jobs, newest first, filtered by the URL's query."""
        return self.render(request, "jobs.html", live="jobs", **self._jobs(request))

    def _job(self, request: Request, message_id: str) -> dict[str, Any]:
        store = get_store(self.settings)
        message_id = queries.checked_id(message_id)
        record = store.read(message_id)
        if record is None:
            raise queries.NotFoundHere(f"no record of job {message_id} (unknown, or expired)")
        state = state_named(record.get("state"))
        moments = queries.timeline(record, store.attempts(message_id))
        return {"record": record, "state": state.value, "ready": state.ready, "timeline": moments}

    def view_job(self, request: Request, message_id: str) -> Response:
        """One job's record: its timeline, progress, result or error, and its actions (an id in
        capitals is sent to its page's own address).
        """
        canonical = queries.checked_id(message_id)
        if canonical != message_id:
            return redirect(self.url(request, "job", message_id=canonical), 308)
        return self.render(request, "job.html", live="job", message_id=message_id, **self._job(request, message_id))

    def view_workers(self, request: Request) -> Response:
        """The worker processes with a heartbeat."""
        return self.render(request, "workers.html", live="workers", workers=queries.workers(get_store(self.settings)))

    def view_dead_letters(self, request: Request) -> Response:
        """Each queue's dead letters: actor, reason, argument shapes."""
        from pipeline.broker import get_broker

        declared = get_broker().actors
        groups = []
        with DeadLetters() as letters:
            for queue in dead_letter_queues(None):
                rows = []
                for dead in letters.take([queue], DEAD_SHOWN):
                    actor = declared.get(dead.actor or "")
                    shown = actor.options.get(SHOWN_ARGUMENTS_OPTION, ()) if actor is not None else ()
                    rows.append(dead.summary(shown))
                groups.append({"queue": queue.removesuffix(".XQ"), "rows": rows})
        return self.render(request, "dead_letters.html", live=None, groups=groups)

    def view_live(self, request: Request, view: str) -> Response:
        """The live part of a page: HTML to poll, or a stream of it (server-sent events)."""
        message_id = request.args.get("id", "")

        def part() -> str:
            if view == "overview":
                context = self._overview(request)
            elif view == "jobs":
                context = self._jobs(request)
            elif view == "job":
                context = {"message_id": message_id, **self._job(request, message_id)}
            else:
                context = {"workers": queries.workers(get_store(self.settings))}
            return self.templates.get_template(f"_{view}.html").render(**self._shared(request), **context)

        first = part()
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return Response(first, mimetype="text/html")
        return Response(self._stream(first, part), mimetype="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @staticmethod
    def _stream(first: str, part: Callable[[], str]) -> Iterator[str]:
        """Send the part whenever it changes, a comment line otherwise (which also finds a
        browser that left), for :data:`LIVE_FOR` seconds.
        """
        yield "retry: 2000\n" + _event(first)
        seen = hashlib.sha256(first.encode()).digest()
        ends = time.monotonic() + LIVE_FOR
        while time.monotonic() < ends:
            time.sleep(LIVE_EVERY)
            try:
                now = part()
            except PipelineError:
                yield ": a service did not answer\n\n"
                continue
            digest = hashlib.sha256(now.encode()).digest()
            if digest != seen:
                seen = digest
                yield _event(now)
            else:
                yield ": unchanged\n\n"

    # -- actions ---------------------------------------------------------------------------

    def _actions(self, request: Request) -> Actions:
        caller = request.environ["pipeline.caller"]
        return Actions(self.settings, caller[0])

    def view_job_action(self, request: Request, message_id: str, action: str) -> Response:
        """Revoke, retry or forget one job, then show it again."""
        message_id = queries.checked_id(message_id)
        actions = self._actions(request)
        if action == "revoke":
            done = "revoked" if actions.revoke(message_id) else "already finished: not revoked"
        elif action == "retry":
            actions.retry(message_id)
            done = "requeued"
        else:
            actions.forget(message_id)
            return redirect(self.url(request, "jobs") + "?" + urlencode({"done": f"forgot {message_id}"}), 303)
        return redirect(self.url(request, "job", message_id=message_id) + "?" + urlencode({"done": done}), 303)

    def view_requeue(self, request: Request) -> Response:
        """Requeue dead letters: the ids given, or every one of an actor."""
        ids = set(request.form.getlist("ids"))
        actor = request.form.get("actor") or None
        queue = request.form.get("queue") or None
        if not ids and actor is None:
            raise ActionRefused("say which dead letters to requeue: ids, or an actor")
        done, refused, more = self._actions(request).requeue(ids=ids or None, actor=actor, queue=queue)
        passed = f"; {len(refused)} left, as no worker could run them (see each one)" if refused else ""
        beyond = f"; {MORE_REMAIN}" if more else ""
        return redirect(
            self.url(request, "dead_letters") + "?" + urlencode({"done": f"requeued {len(done)}{passed}{beyond}"}),
            303,
        )

    def view_purge(self, request: Request) -> Response:
        """Purge a queue's dead letters, once its name is typed as the confirmation."""
        purged = self._actions(request).purge(request.form.get("queue", ""), request.form.get("confirm", ""))
        return redirect(self.url(request, "dead_letters") + "?" + urlencode({"done": f"purged {purged}"}), 303)


def _event(html: str) -> str:
    return "".join(f"data: {line}\n" for line in html.splitlines() or [""]) + "\n"


def make_app(
    prefix: str = "",
    authorize: Authorize | None = None,
    *,
    writes: bool = False,
    settings: Settings | None = None,
) -> Dashboard:
    """The dashboard as a WSGI application.

    Parameters:
      prefix: The path it is served under, when the server passes the full path.
      authorize: Who makes a request (see :mod:`pipeline.web.access`); by default every caller
        is a viewer, which suits only a server no one else reaches.
      writes: Offer the write actions (revoke, retry, forget, requeue, purge) to operators.
      settings: The deployment's settings; the process's when omitted.
    """
    return Dashboard(
        prefix=prefix, authorize=authorize or (lambda request: Role.VIEWER), writes=writes, settings=settings
    )

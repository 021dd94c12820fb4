"""What the dashboard's pages show, read from the records, the management API and the heartbeats.

Every filter a page takes from its URL is checked here: a bad one raises :class:`BadFilter`,
which the page answers with 400 and the reason.
"""

from __future__ import annotations

import datetime
import re
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

from pipeline.amqp_text import SHORT_TEXT, is_short_text
from pipeline.errors import InvalidJobId, ManagementUnavailable, PipelineError
from pipeline.job_id import check_job_id
from pipeline.job_record import JobRecord
from pipeline.management import ManagementApi, broker_vhost, from_management
from pipeline.settings import Settings
from pipeline.states import JobState
from pipeline.store.records import RecordStore
from pipeline.store.workers import WorkerEntry, WorkerRegistry

#: Jobs shown per page.
PAGE_SIZE = 50
#: Time windows a list may be filtered by.
WINDOWS = {"15m": 900, "1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
#: Finished records read at most per state for the overview's figures.
SAMPLED = 1000
#: What an id prefix may hold.
ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


class BadFilter(PipelineError):
    """A page's URL holds a filter that cannot be used; the message says which and why (400)."""


class NotFoundHere(PipelineError):
    """What a page was asked for does not exist: a malformed or unknown id, a page past the end
    of a list; the message says which (404).
    """


def job_filters(args: dict[str, str]) -> dict[str, Any]:
    """The checked filters of the jobs list: state, actor, window, id prefix, cursor.

    Raises:
      BadFilter: One of them cannot be used.
    """
    filters: dict[str, Any] = {"state": None, "actor": None, "window": "", "prefix": "", "before": None}
    state = args.get("state", "")
    if state:
        if state not in JobState.__members__ or state == "PENDING":
            known = ", ".join(s for s in JobState.__members__ if s != "PENDING")
            raise BadFilter(f"state {state[:40]!r} is not one of {known}")
        filters["state"] = JobState(state)
    actor = args.get("actor", "")
    if actor:
        if not is_short_text(actor):
            raise BadFilter(f"actor {actor[:60]!r} is not an actor name ({SHORT_TEXT})")
        filters["actor"] = actor
    window = args.get("window", "")
    if window:
        if window not in WINDOWS:
            raise BadFilter(f"window {window[:20]!r} is not one of {', '.join(WINDOWS)}")
        filters["window"] = window
    prefix = args.get("prefix", "").strip().lower()
    if prefix:
        if not ID_PREFIX.fullmatch(prefix):
            raise BadFilter(f"id prefix {prefix[:40]!r} holds characters no job id has")
        filters["prefix"] = prefix
    before = args.get("before", "")
    if before:
        if not (before.isascii() and before.isdigit()) or len(before) > 20:
            raise BadFilter(f"cursor {before[:30]!r} is not a cursor of this list")
        filters["before"] = int(before)
    return filters


def job_page(store: RecordStore, filters: dict[str, Any]) -> tuple[list[JobRecord], int | None]:
    """One page of the jobs list for ``filters``, and the next page's cursor."""
    since = time.time() - WINDOWS[filters["window"]] if filters["window"] else 0.0
    return store.page(
        state=filters["state"],
        actor=filters["actor"],
        since=since,
        before=filters["before"],
        id_prefix=filters["prefix"],
        limit=PAGE_SIZE,
    )


def queues(settings: Settings) -> tuple[list[dict[str, Any]], str]:
    """Each queue's figures from the management API, and what went wrong when it could not say."""
    try:
        return from_management(ManagementApi.from_settings(settings), broker_vhost(settings)), ""
    except ManagementUnavailable as exc:
        return [], str(exc)


def _seconds(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0]}
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": statistics.median(values), "p95": cuts[18]}


def actor_figures(store: RecordStore, window: float = 3600) -> tuple[list[dict[str, Any]], bool]:
    """Per actor, its jobs by state over the last ``window`` seconds and the p50/p95 of queue wait
    (start minus send) and run time (end minus start); True when records were sampled (the
    newest :data:`SAMPLED` of a state), else the counts are exact.
    """
    found = store.sample(time.time() - window, SAMPLED, ["actor", "enqueued_at", "started_at", "finished_at"])
    sampled = any(len(rows) == SAMPLED for rows in found.values())
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    waits: dict[str, list[float]] = defaultdict(list)
    runs: dict[str, list[float]] = defaultdict(list)
    for state, rows in found.items():
        for named, enqueued, started, finished in rows:
            actor = named if isinstance(named, str) and named else "?"
            counts[actor][state.value] += 1
            sent, began, ended = (_seconds(v) for v in (enqueued, started, finished))
            if state in (JobState.SUCCESS, JobState.FAILURE) and began is not None:
                if sent is not None:
                    waits[actor].append(max(0.0, began - sent))
                if ended is not None:
                    runs[actor].append(max(0.0, ended - began))
    figures = [
        {
            "actor": actor,
            "counts": dict(counts[actor]),
            "wait": _percentiles(waits[actor]),
            "run": _percentiles(runs[actor]),
        }
        for actor in sorted(counts)
    ]
    return figures, sampled


def workers(store: RecordStore) -> list[WorkerEntry]:
    """The workers with a heartbeat, lost ones included."""
    return WorkerRegistry(store.redis).alive()


def timeline(record: JobRecord, attempts: list[dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """The job's moments in order, as (time, what, detail): the record's, and each ended attempt
    of its history with its error.
    """
    fields: dict[str, Any] = dict(record)
    moments: list[tuple[str, str, str]] = []
    # An attempt kept in the history as STARTED never ended: its worker was cut off.
    ended = {"RETRY": "failed; retried", "FAILURE": "failed", "INTERRUPTED": "interrupted", "STARTED": "cut off"}
    seen: set[Any] = set()
    for entry in attempts or []:
        number = entry.get("attempt")
        seen.add(number)
        if isinstance(entry.get("started_at"), str):
            moments.append((entry["started_at"], f"attempt {number} started", ""))
        error = entry.get("error")
        detail = (
            f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else str(entry.get("why", ""))
        )
        if isinstance(entry.get("ended_at"), str):
            moments.append(
                (entry["ended_at"], f"attempt {number} {ended.get(str(entry.get('state')), 'ended')}", detail)
            )

    def add(name: str, what: str, detail: str = "") -> None:
        value = fields.get(name)
        if isinstance(value, str) and value:
            moments.append((value, what, detail))

    add("enqueued_at", "sent", f"to {fields.get('queue', '?')}, priority {fields.get('priority', 0)}")
    add("eta", "due", "sent with a delay")
    cut_off = fields.get("cut_off")
    if isinstance(cut_off, dict) and cut_off.get("attempt") not in seen:
        if isinstance(cut_off.get("started_at"), str):
            moments.append((cut_off["started_at"], f"attempt {cut_off.get('attempt')} started", ""))
        if isinstance(cut_off.get("noticed_at"), str):
            moments.append((cut_off["noticed_at"], f"attempt {cut_off.get('attempt')} cut off", "its worker died"))
    if not seen:
        add("interrupted_at", "interrupted", str(fields.get("interrupted", "")))
    add("requeued_at", "requeued", f"from the dead letters ({fields.get('requeues', 1)} so far)")
    if fields.get("attempt", 1) not in seen:
        add("started_at", f"attempt {fields.get('attempt', 1)} started")
    error = fields.get("error")
    if fields.get("state") == JobState.RETRY.value:
        detail = f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else ""
        add("next_attempt_at", "next attempt due", detail if not seen else "")
    final = {"SUCCESS": "succeeded", "FAILURE": "failed", "REVOKED": "revoked"}.get(str(fields.get("state")))
    if final and not (final == "failed" and fields.get("attempt") in seen):
        add("finished_at" if fields.get("state") != "REVOKED" else "revoked_at", final)
    return sorted(moments)


def checked_id(message_id: str) -> str:
    """The job id ``message_id`` names (see :func:`~pipeline.job_id.check_job_id`).

    Raises:
      NotFoundHere: It names none.
    """
    try:
        return check_job_id(message_id)
    except InvalidJobId:
        raise NotFoundHere(f"{message_id[:60]!r} is not a job id") from None


def safe_link(url: Any) -> str | None:
    """``url`` when it is an http(s) link, else None (a record's ``javascript:`` is never a link)."""
    if isinstance(url, str) and re.match(r"https?://", url, re.IGNORECASE) and not any(ord(c) < 32 for c in url):
        return url
    return None

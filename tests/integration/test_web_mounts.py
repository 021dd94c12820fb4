"""The dashboard mounted under a prefix in a service's own app, with that app's login deciding
who may do what: a Flask (WSGI) app and a FastAPI (ASGI) app."""

from __future__ import annotations

import uuid

import pytest
from a2wsgi import WSGIMiddleware
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from testenv import make_settings

from pipeline.states import JobState
from pipeline.store.records import get_store
from pipeline.web import Role, make_app

pytestmark = pytest.mark.integration


@pytest.fixture
def job(clean_redis) -> str:
    message_id = str(uuid.uuid4())
    get_store().write(message_id, JobState.FAILURE, attempt=1, actor="send_email", error={"type": "X", "message": "m"})
    return message_id


def test_mounted_in_flask_under_a_prefix_with_flasks_login(job):
    from flask import Flask, session
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    shop = Flask("shop")
    shop.secret_key = "test-only"

    @shop.post("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        return "ok"

    def authorize(request):
        # The shop's own session cookie decides: its admins act, its staff look.
        cookie = request.cookies.get(shop.config["SESSION_COOKIE_NAME"])
        serializer = shop.session_interface.get_signing_serializer(shop)
        user = serializer.loads(cookie).get("user") if cookie and serializer else None
        return {"ann": ("ann", Role.OPERATOR), "sam": ("sam", Role.VIEWER)}.get(user)

    shop.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        shop.wsgi_app, {"/jobs": make_app(authorize=authorize, writes=True, settings=make_settings())}
    )
    client = shop.test_client()
    assert client.get("/jobs/").status_code == 401
    client.post("/login/sam")
    page = client.get(f"/jobs/jobs/{job}")
    assert page.status_code == 200 and "FAILURE" in page.text
    # Links and forms stay under the mount.
    assert 'href="/jobs/jobs"' in page.text and 'src="/jobs/static/live.js"' in page.text
    assert "Revoke" not in page.text and "Forget" not in page.text
    token = client.get_cookie("pipeline_csrf", path="/jobs")
    assert token is not None
    assert client.post(f"/jobs/jobs/{job}/forget", data={"csrf": token.value}).status_code == 403
    client.post("/login/ann")
    assert 'action="/jobs/jobs/' in client.get(f"/jobs/jobs/{job}").text
    forgot = client.post(f"/jobs/jobs/{job}/forget", data={"csrf": token.value})
    assert forgot.status_code == 303 and forgot.headers["Location"].startswith("/jobs/jobs?")
    assert get_store().read(job) is None


def test_mounted_in_fastapi_under_a_prefix_with_its_own_login(job):
    api = FastAPI()
    sessions = {"token-ann": "ann"}

    @api.post("/login")
    def login(response: Response) -> dict[str, str]:
        response.set_cookie("shop_session", "token-ann")
        return {"user": "ann"}

    def authorize(request):
        user = sessions.get(request.cookies.get("shop_session", ""))
        return (user, Role.OPERATOR) if user else None

    api.mount("/ops/jobs", WSGIMiddleware(make_app(authorize=authorize, writes=True, settings=make_settings())))
    client = TestClient(api)
    assert client.get("/ops/jobs/").status_code == 401
    client.post("/login")
    page = client.get(f"/ops/jobs/jobs/{job}")
    assert page.status_code == 200 and "FAILURE" in page.text and 'href="/ops/jobs/jobs"' in page.text
    token = client.cookies.get("pipeline_csrf")
    assert token
    revoked = client.post(f"/ops/jobs/jobs/{job}/revoke", data={"csrf": token}, follow_redirects=False)
    # A failed job is finished: revoke says so rather than changing it.
    assert revoked.status_code == 303 and "already+finished" in revoked.headers["location"]
    assert client.post(f"/ops/jobs/jobs/{job}/revoke", data={}, follow_redirects=False).status_code == 403

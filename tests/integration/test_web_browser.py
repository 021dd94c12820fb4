"""The dashboard in headless Chromium against the real services: open the overview, follow a
failing job to its page, requeue it from the dead-letter page and watch it end ``SUCCESS``
without reloading; a screenshot of each page is saved in the test's temporary folder."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sample_actors
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from services import ROOT
from testenv import make_settings
from werkzeug.serving import make_server

from pipeline.queues import DEFAULT_QUEUE
from pipeline.results import AsyncResult
from pipeline.states import JobState
from pipeline.web import Role, make_app

pytestmark = pytest.mark.integration

#: Where the README's screenshots live; refreshed by a run with PIPELINE_TEST_SCREENSHOTS=1.
README_IMAGES = ROOT / "docs" / "images"


@pytest.fixture
def dashboard() -> Iterator[str]:
    """The dashboard served on a free port of 127.0.0.1, with write actions; its base URL."""
    app = make_app(authorize=lambda request: ("ops", Role.OPERATOR), writes=True, settings=make_settings())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def shot(browser: WebDriver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path))
    if os.environ.get("PIPELINE_TEST_SCREENSHOTS") and name in ("overview", "job-success"):
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, README_IMAGES / f"dashboard-{name}.png")
    return path


def test_follow_a_failing_job_requeue_it_and_watch_it_succeed(
    browser, dashboard, purge, start_worker, redis_client, tmp_path
):
    purge(DEFAULT_QUEUE)
    start_worker([DEFAULT_QUEUE], threads=2)
    key = f"browser-{uuid.uuid4()}"
    sent = sample_actors.fails_until_fixed.send(key, secret="never-shown")
    result = AsyncResult(sent.message_id)
    WebDriverWait(browser, 10).until(lambda _: result.state is JobState.FAILURE)
    wait = WebDriverWait(browser, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

    browser.get(dashboard + "/")
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "main"), "fails_until_fixed"))
    shot(browser, tmp_path, "overview")
    # From the actor's failures to the job.
    browser.get(dashboard + "/jobs?state=FAILURE")
    # The live list may draw the link anew between finding it and clicking it.
    wait.until(lambda _: browser.find_element(By.LINK_TEXT, sent.message_id).click() or True)
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "p.state"), "FAILURE"))
    assert "is not fixed yet" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, tmp_path, "job-failure")

    redis_client.set(sample_actors.FIXED_PREFIX + key, "1")
    browser.get(dashboard + "/dead-letters")
    row = f"//tr[td/a[text()='{sent.message_id}']]"
    browser.find_element(By.XPATH, row)
    assert "never-shown" not in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, tmp_path, "dead-letters")
    wait.until(lambda _: browser.find_element(By.XPATH, row + "//button").click() or True)
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "p.done"), "requeued 1"))

    browser.get(f"{dashboard}/jobs/{sent.message_id}")
    # No reload from here: the live part turns SUCCESS by itself.
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "p.state"), "SUCCESS"))
    assert result.get(timeout=1) == "fixed"
    shot(browser, tmp_path, "job-success")
    browser.get(dashboard + "/workers")
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "table.workers"), "running"))
    shot(browser, tmp_path, "workers")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "dead-letters.png",
        "job-failure.png",
        "job-success.png",
        "overview.png",
        "workers.png",
    ]

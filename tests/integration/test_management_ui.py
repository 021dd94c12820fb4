"""RabbitMQ's management UI, driven in headless Chromium after a job was sent: a person sees the
queues with their priorities and, under "Get messages", what a message is."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, unquote, urlsplit

import pytest
import testenv
from selenium.common.exceptions import ElementNotInteractableException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from pipeline.actors import ping
from pipeline.queues import DEFAULT_QUEUE, SLOW_QUEUE

pytestmark = pytest.mark.integration


def page_text(browser: WebDriver) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def test_the_ui_shows_the_queues_priorities_and_a_message_type_and_id(browser, purge, tmp_path):
    purge(DEFAULT_QUEUE)
    message = ping.send({"order": 17}, priority=4)
    management = urlsplit(testenv.MANAGEMENT_URL)
    base = f"{management.scheme}://{management.hostname}:{management.port}/"
    # The UI redraws its tables every few seconds: an element found may go stale before use; a
    # section opening is drawn (and its button clickable) a moment after it is clicked.
    wait = WebDriverWait(
        browser, 20, ignored_exceptions=[StaleElementReferenceException, ElementNotInteractableException]
    )

    browser.get(base)
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "username")))
    browser.find_element(By.NAME, "username").send_keys(unquote(management.username or "guest"))
    browser.find_element(By.NAME, "password").send_keys(unquote(management.password or "guest"))
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "logout")))
    browser.save_screenshot(str(tmp_path / "1-overview.png"))

    browser.get(base + "#/queues")
    rows = wait.until(lambda b: _queue_rows(b))
    browser.save_screenshot(str(tmp_path / "2-queues.png"))
    for queue in (DEFAULT_QUEUE, SLOW_QUEUE):
        assert "Pri" in rows[queue], rows

    browser.get(base + f"#/queues/{quote(testenv.vhost(), safe='')}/{DEFAULT_QUEUE}")
    wait.until(lambda b: _click(b, "h2", lambda e: e.text == "Get messages"))
    wait.until(lambda b: _click(b, "input[type=submit]", lambda e: e.get_attribute("value") == "Get Message(s)"))
    wait.until(lambda b: "message_id:" in page_text(b))
    browser.save_screenshot(str(tmp_path / "3-get-messages.png"))
    shown = page_text(browser)
    assert f"message_id: {message.message_id}" in shown
    assert "type: ping" in shown and "app_id: pipeline" in shown and "content_type: application/json" in shown
    assert (tmp_path / "3-get-messages.png").stat().st_size > 0


def _click(browser: WebDriver, selector: str, wanted: Callable[[WebElement], bool]) -> bool:
    """Click the first element matching ``selector`` that is ``wanted``; False when none is there yet."""
    found = next((e for e in browser.find_elements(By.CSS_SELECTOR, selector) if wanted(e)), None)
    if found is None:
        return False
    found.click()
    return True


def _queue_rows(browser: WebDriver) -> dict[str, str] | None:
    """The Queues page's rows of the tests' vhost, by queue name; None until they show."""
    rows = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        if len(cells) > 2 and cells[0].text == testenv.vhost():
            rows[cells[1].text] = row.text
    return rows if DEFAULT_QUEUE in rows and SLOW_QUEUE in rows else None

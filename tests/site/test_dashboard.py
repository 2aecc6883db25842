"""The dashboard in a real headless browser (Debian's chromium + chromedriver, driven by selenium),
served by a local stack's site service: sign in, submit from the page, watch log lines arrive live,
cancel a running task, rerun a failed one. With POOL_DOCS_SCREENSHOTS=DIR each page is saved there
as a PNG (the screenshots in docs/ come from this test)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed (scripts/install-system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    target = os.environ.get("POOL_DOCS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / f"dashboard-{name}.png"))


def until(condition, timeout: float = 30, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page is (re)loading
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def text_of(driver, element_id: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def submit_from_page(driver, base: str, command: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/tasks")
    field = driver.find_element(By.ID, "submit-command")
    field.clear()
    field.send_keys(command)
    driver.find_element(By.ID, "submit-button").click()
    until(lambda: "/tasks/t" in driver.current_url, what="the task page after submitting")
    return driver.current_url.rsplit("/", 1)[1]


def test_dashboard_sign_in_submit_live_logs_cancel_rerun(browser, site_stack):
    from selenium.webdriver.common.by import By

    base = site_stack.service.url
    driver = browser
    driver.get(f"{base}/")
    assert "/login" in driver.current_url  # no cookie: the sign-in form
    driver.find_element(By.ID, "token").send_keys("not-the-token-at-all")
    driver.find_element(By.ID, "sign-in").click()
    # the click returns before the form's answer has loaded: wait for the page that says why
    assert "unknown token" in until(lambda: text_of(driver, "error"), what="the sign-in error")
    shot(driver, "login")
    driver.find_element(By.ID, "token").send_keys(site_stack.profile.site_token)
    driver.find_element(By.ID, "sign-in").click()
    until(lambda: driver.find_elements(By.ID, "pools"), what="the pools page")
    cookie = driver.get_cookie("pool_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""  # not readable by scripts

    # Submit from the page and watch the log lines arrive while the task runs.
    task_id = submit_from_page(driver, base, "sh -c 'for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.5; done'")
    until(lambda: "line-1" in text_of(driver, "stdout"), what="the first log line")
    assert "line-6" not in text_of(driver, "stdout")  # it arrived live, before the task ended
    shot(driver, "task-running")
    until(lambda: "line-6" in text_of(driver, "stdout"), what="the last log line")
    until(lambda: text_of(driver, "task-state") == "finished", what="the finished state (page reload)")
    history = text_of(driver, "history")
    assert "queued" in history and "running" in history and "finished" in history

    # Cancel a running task with its button.
    task_id = submit_from_page(driver, base, "sh -c 'echo waiting; sleep 60'")
    until(lambda: "waiting" in text_of(driver, "stdout"), what="the running task's output")
    driver.find_element(By.ID, "cancel").click()
    until(lambda: text_of(driver, "task-state") == "cancelled", timeout=30, what="the cancelled state")

    # Rerun a failed task with its button.
    task_id = submit_from_page(driver, base, "sh -c 'echo about to fail; exit 3'")
    until(lambda: text_of(driver, "task-state") == "failed", what="the failed state")
    driver.find_element(By.ID, "rerun").click()
    until(lambda: "attempt 2" in driver.page_source and text_of(driver, "task-state") == "failed",
          what="the second attempt failing again")
    assert "rerun from the dashboard" in text_of(driver, "history")
    shot(driver, "task")

    # The list pages render what the API says.
    driver.get(f"{base}/tasks?state=cancelled")
    assert driver.find_element(By.ID, "tasks").text.count("cancelled") >= 1
    driver.get(f"{base}/tasks")
    assert task_id in driver.find_element(By.ID, "tasks").text
    shot(driver, "tasks")
    driver.get(f"{base}/")
    assert "default" in driver.find_element(By.ID, "pools").text
    shot(driver, "pools")
    driver.get(f"{base}/workers")
    workers = driver.find_element(By.ID, "workers").text
    assert "default-w1" in workers and "default-w2" in workers
    shot(driver, "workers")
    driver.get(f"{base}/dead-letters")
    assert driver.find_element(By.ID, "dead-letters")
    shot(driver, "dead-letters")

"""The page at `/` in a real headless Chromium (Debian's `chromium` + `chromium-driver`, via Selenium)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from service_process import ServiceProcess  # noqa: E402


def _binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver here (apt-get install -y chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    binary, driver_path = _binaries()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_streams_a_compare_and_shows_the_verdict(smollm2_path: Path, browser: Any) -> None:
    with ServiceProcess(smollm2_path, "--ctx", "1024", "--parallel", "2", "--max-think-tokens", "12") as service:
        service.wait_ready()
        browser.get(service.url + "/")
        wait = WebDriverWait(browser, 300)
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("model:"))
        browser.find_element(By.ID, "question").send_keys("What is the capital of France?")
        boxes = browser.find_elements(By.CSS_SELECTOR, "#responses textarea")
        assert len(boxes) == 2
        boxes[0].send_keys("Paris.")
        boxes[1].send_keys("Lyon.")
        Select(browser.find_element(By.ID, "op")).select_by_value("compare")
        assert browser.find_element(By.ID, "swap").is_selected()
        browser.find_element(By.ID, "submit").click()

        wait.until(lambda d: d.find_element(By.ID, "verdict").is_displayed())
        assert not browser.find_element(By.ID, "error").is_displayed()
        winner = browser.find_element(By.ID, "winner").text
        assert winner.startswith(("Response a is better", "Response b is better", "Tie")) and "P(a better)" in winner
        rows = browser.find_elements(By.CSS_SELECTOR, "#orders tr")[1:]
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert [c[0] for c in cells] == ["AB", "BA"]
        assert all(c[4].endswith("%") for c in cells)
        # the reasoning of each order was streamed into its own box, labelled with the order
        for index, order in enumerate(["AB", "BA"]):
            box = browser.find_element(By.ID, f"think-{index}")
            assert f"order {order}" in box.text and box.find_element(By.TAG_NAME, "pre").text.strip()
        disagree = cells[0][3] != cells[1][3]
        assert browser.find_element(By.ID, "warning").is_displayed() == disagree
        assert winner.startswith("Tie") == disagree

"""``kanin docs``: the shop's event catalog, loaded in headless Chromium (Debian's, driven
by its ChromeDriver): no console errors, every shop event listed, every link inside the
page leads somewhere, and a screenshot of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")
SHOP_EVENTS = [
    "inventory.reserved", "order.placed", "payment.captured", "payment.failed",
    "shipment.scheduled",
]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    made = subprocess.run(
        [KANIN, "docs", "workers", "--out", str(out)], capture_output=True, text=True,
        timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"event catalog written to {out / 'index.html'}: 5 events\n"
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    assert driver_path and chromium, "Chromium and ChromeDriver: make services installs them"
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_catalog_loads_without_errors_and_lists_every_shop_event(
    site: Path, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get((site / "index.html").as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.title == "kanin: event catalog"
    events = [
        s.get_attribute("id") for s in browser.find_elements(By.CSS_SELECTOR, "section.event")
    ]
    assert events == [f"event-{name}" for name in SHOP_EVENTS]
    assert browser.find_elements(By.CSS_SELECTOR, ".diagram svg"), "the topology drawn as SVG"
    shot = tmp_path / "catalog.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_every_link_inside_the_page_leads_to_its_target(
    site: Path, browser: webdriver.Chrome
) -> None:
    browser.get((site / "index.html").as_uri())
    targets = browser.execute_script(
        "return [...document.querySelectorAll('a[href^=\"#\"]')]"
        ".map(a => [a.getAttribute('href').slice(1), !!document.getElementById("
        "a.getAttribute('href').slice(1))])"
    )
    assert len(targets) > 20
    assert [t for t, found in targets if not found] == []
    order = browser.find_element(By.ID, "event-order.placed")
    order.find_element(By.LINK_TEXT, "inventory.reserve").click()
    assert browser.execute_script("return location.hash") == "#queue-inventory.reserve"
    queue = browser.find_element(By.ID, "queue-inventory.reserve")
    assert "5 attempts, exponential backoff" in queue.text
    assert "inventory.reserve.dlq" in queue.text
    queue.find_element(By.LINK_TEXT, "order.placed").click()
    assert browser.execute_script("return location.hash") == "#event-order.placed"
    example = order.find_element(By.TAG_NAME, "pre").text
    assert json.loads(example)["items"][0]["quantity"] == 1

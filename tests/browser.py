"""Headless Debian chromium driven by selenium through Debian's chromedriver, with the network off.

:func:`open_page` loads a ``file://`` page offline (DevTools ``Network.emulateNetworkConditions(offline=True)``,
and every host name resolves to nothing) and records the browser's console and network events; it skips the test
only where chromium or its driver is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("RAYMATCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RAYMATCH_CHROMEDRIVER", "/usr/bin/chromedriver")


def require_chromium() -> None:
    """Skip the calling test, with the reason, where chromium or chromedriver is missing."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() or shutil.which(path)):
            pytest.skip(f"{path} not found: install Debian's {package} (.ci/run does, as root)")


@contextlib.contextmanager
def open_page(path: Path, *, width: int = 1400, height: int = 1000) -> Iterator:
    """A chromium session with ``path`` loaded offline; yields the selenium driver."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-default-apps", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        driver.get(path.resolve().as_uri())
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (DevTools ``Network.requestWillBeSent``)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_problems(driver) -> list[str]:
    """Console messages at level WARNING or above since the last call."""
    return [f"{entry['level']}: {entry['message']}" for entry in driver.get_log("browser")
            if entry["level"] in ("SEVERE", "WARNING")]


def screenshot(driver, path: Path) -> Path:
    """A PNG of the whole page (beyond the window) at ``path``; copied to ``$RAYMATCH_TEST_ARTIFACTS`` when set."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    artifacts = os.environ.get("RAYMATCH_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path

"""Headless Chromium for the console tests, driven by Selenium through the system
chromedriver (Debian's `chromium` and `chromium-driver`; Selenium Manager cannot download a
browser here). Tests that need it skip, naming the install command, when it is missing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

INSTALL = "apt-get install chromium chromium-driver"
WAIT = 20.0
"""Seconds a step waits for the page (machines shared by several runs are slow)."""


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser(width: int = 1280, height: int = 900) -> Any:
    paths = chromium_paths()
    if paths is None:
        pytest.skip(f"no headless browser: `{INSTALL}` (chromium and chromedriver on PATH)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={width},{height}", "--force-device-scale-factor=1",
    ):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)


def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the element is not there yet, or went stale
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def screenshot_on_failure(driver: Any, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-failure.png"
    driver.save_screenshot(str(path))
    return path

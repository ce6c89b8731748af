"""A real headless Chromium for the page tests: Debian's ``chromium`` and ``chromium-driver``, driven by selenium.

scripts/setup.sh installs both. Selenium starts ``chromedriver`` on a loopback port and ends
it (and the browser it started) at ``quit``; the fixture also kills what is left by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def start_browser(size=(1280, 900)):
    """A headless Chromium with its console log kept; fails the test run when the browser is missing."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason='the page tests need selenium: pip install -e ".[dev]"'
    )
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(f"the page tests need Debian's chromium and chromium-driver (scripts/setup.sh); missing {missing}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)  # fmt: skip
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER)
    return webdriver.Chrome(service=service, options=options)


def stop_browser(driver) -> None:
    pid = driver.service.process.pid if driver.service.process else None
    with contextlib.suppress(Exception):
        driver.quit()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_ready(driver, timeout: float = 20.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.readyState") == "complete")


def check_screenshot(driver, path: Path, name: str) -> np.ndarray:
    """Save a screenshot and check that it is not blank (docs/*.png are made from the demo, see docs/cli.md)."""
    import cv2

    driver.save_screenshot(str(path))
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100
    assert float(picture.std()) > 20, f"{name}: the screenshot is nearly blank (std {picture.std():.1f})"
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 200, f"{name}: too few colours for a page with pictures"
    return picture

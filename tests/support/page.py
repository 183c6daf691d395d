"""reports/report.html in headless Chromium (Debian's chromium and chromium-driver, through selenium)."""

from __future__ import annotations

import os
from pathlib import Path


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class Page:
    """The report's page in headless Chromium: what a reader sees, and the filters clicked as a reader does.
    Without chromium a test skips, except in CI (CI=true), where it fails: CI installs it (.ci/run)."""

    def __init__(self, path: Path, width: int = 1400, height: int = 1000):
        import pytest

        missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
        if missing:
            why = f"no {', '.join(missing)}: apt-get install chromium chromium-driver"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        self.open(path.resolve().as_uri())

    def open(self, url: str) -> None:
        """Load the page afresh (a permalink too, as a reader opens one from elsewhere)."""
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get("about:blank")
        self.driver.get(url)
        # The data is unpacked asynchronously: ready when the first view has counted its rows.
        WebDriverWait(self.driver, 30).until(lambda d: d.execute_script(
            "return document.getElementById('eval-count')?.dataset.n !== undefined"))

    def close(self) -> None:
        self.driver.quit()

    def console(self) -> list[dict]:
        """What the page logged to the console (errors, warnings, failed loads) since the last call."""
        return self.driver.get_log("browser")

    def click(self, css: str) -> None:
        self.driver.find_element("css selector", css).click()

    def count(self, view: str) -> int:
        return int(self.driver.find_element("id", f"{view}-count").get_attribute("data-n"))

    def ids(self, view: str) -> list[str]:
        """Every card the view's filters leave, page after page, as a reader pages through them."""
        ids, pager = [], f"#{view}-pager button[data-go='1']"
        while True:
            ids += [c.get_attribute("data-id") for c in self.driver.find_elements("css selector", f"#{view}-list .card")]
            nxt = self.driver.find_element("css selector", pager)
            if not nxt.is_enabled():
                return ids
            nxt.click()

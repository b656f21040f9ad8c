"""A real headless Chromium for page tests: the operating system's package (``apt-get install -y chromium``),
driven by Playwright for Python (the ``test`` extra). Playwright's own browser download is never used."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

#: Flags for a sandbox-less container without GPU or network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
HOW_TO_GET_IT = ("no Chromium executable: install the operating system's package (Debian/Ubuntu: apt-get install -y "
                 "chromium) or point KICK_CHROMIUM at one")


def chromium_executable() -> str | None:
    """``$KICK_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH, else /usr/bin/chromium; None if none."""
    env = os.environ.get("KICK_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@contextlib.contextmanager
def chromium(executable: str) -> Iterator:
    """A Playwright ``Browser`` on the system Chromium (closed on exit)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, html_file: Path, width: int = 1400, height: int = 1000):
    """A new page showing ``html_file`` from ``file://``, JavaScript done; its errors collected in ``page.errors``,
    the URLs it requested in ``page.requested``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors, page.requested = [], []
    page.on("request", lambda request: page.requested.append(request.url))
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.goto(Path(html_file).resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page

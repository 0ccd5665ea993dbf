"""What the browser tests share: headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by selenium) with a fresh profile per session, the rule for a missing browser, bounded
waits, and a Flask app served on 127.0.0.1.

A missing browser skips a test locally with a message, and fails it in CI (``CI=true``), where
``.ci/run`` installs the packages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

CHROMIUM = os.environ.get("SHOP_EVENTS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SHOP_EVENTS_CHROMEDRIVER", "/usr/bin/chromedriver")
DESKTOP_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
"""A shopper's browser: headless Chromium's own agent says ``HeadlessChrome``, which the bot
rules take for a link scanner or a crawler (redirected, not counted, not recorded)."""
WAIT = 10.0
"""Seconds :func:`wait_for` waits for a page to get where a test expects it."""


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when Chromium and selenium are there."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    """Skip the calling test when the browser is missing; fail it instead in CI."""
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs the browser tests: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(
    *,
    window: tuple[int, int],
    user_agent: str | None = None,
    console: bool = False,
    scrollbars: bool = True,
) -> Iterator[Any]:
    """A headless Chromium session with a fresh profile (no cookies), quit and its profile
    removed on exit.

    ``user_agent`` replaces Chromium's own (:data:`DESKTOP_AGENT` for a shopper); ``console``
    keeps the page's console for ``driver.get_log("browser")``; ``scrollbars=False`` hides
    them, so screenshots show the page alone. Skips or fails as :func:`require_browser` does.
    """
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="shop-events-chromium-")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        if console:
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            f"--window-size={window[0]},{window[1]}",
            f"--user-data-dir={profile}",
        ]
        if not scrollbars:
            flags.append("--hide-scrollbars")
        if user_agent is not None:
            flags.append(f"--user-agent={user_agent}")
        for flag in flags:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll ``condition`` until it is truthy (bounded by :data:`WAIT`) and return its value;
    elements of a page being replaced are retried (Chromium reports some as a node that "does
    not belong to the document" rather than as stale)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt() -> Any:
        try:
            return condition()
        except WebDriverException as exc:
            if REPLACED in str(exc.msg or ""):
                return False
            raise

    # the condition holds its own driver: the one a wait passes along is never used
    wait = WebDriverWait(  # type: ignore[type-var]
        None, WAIT, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(lambda _: attempt(), message=f"waited {WAIT}s for {what}")


REPLACED = "does not belong to the document"
"""Chromium's word for an element of a page that was replaced while it was read."""


class Served:
    """A Flask app served by werkzeug on 127.0.0.1 in a thread."""

    def __init__(self, app: Flask) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

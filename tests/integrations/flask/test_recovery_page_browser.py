"""The recovery page in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by selenium): it renders under its Content-Security-Policy with nothing in the console,
its charts take real room on screen with their bars drawn, and a screenshot of it is written
and is not blank.

A missing browser skips these tests locally with a message, and fails them in CI (``CI=true``):
see ``tests/browser.py``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from freezegun import freeze_time
from shop_events import ShopEvents, Tracker
from shop_events.testing import Receiver

from tests.browser import Served, chromium
from tests.integrations.flask.test_recovery_page import HOUR, START, scenario
from tests.support import SettingsFactory

pytestmark = pytest.mark.slow

PAGE = "/shop-events/admin/recovery"
SEEN_AT = START + 74 * HOUR
"""When the operator looks: after the scenario's last reminder."""
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
    '<rect width="16" height="16"/></svg>'
)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile and its console kept."""
    with chromium(window=(1280, 2600), console=True, scrollbars=False) as browser:
        yield browser


def png_pixels(data: bytes) -> list[tuple[int, ...]]:
    """The pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, "an unexpected PNG layout"
    size = 4 if color == 6 else 3
    stride = width * size
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up))
                near = min(near, (abs(guess - corner), 2, corner))
                line[i] = (line[i] + near[2]) & 0xFF
        pixels.extend(tuple(line[i : i + 3]) for i in range(0, stride, size))
        previous = line
    return pixels


def shop(tracker: Tracker) -> Flask:
    app = Flask("recovery-browser-shop")
    app.secret_key = "recovery-browser-secret"
    ShopEvents(app, tracker=tracker, admin_access=lambda: True)

    @app.get("/csp-probe")
    def probe() -> Response:
        """A page breaking the recovery page's policy, to show that the console reports it."""
        policy = app.test_client().get(PAGE).headers["Content-Security-Policy"]
        return Response(
            "<!doctype html><title>probe</title><script>document.title = 'ran'</script>",
            headers={"Content-Security-Policy": policy},
        )

    @app.get("/favicon.ico")
    def favicon() -> Response:
        """The shop's icon: without one, the browser's own request for it is a 404 in the
        console, which is no message of the page under test."""
        return Response(ICON, mimetype="image/svg+xml")

    return app


def severe(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_recovery_page_renders_its_charts_under_its_policy(
    driver: Any, make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    settings = make_settings(
        abandoned_cart={"steps": ["1h", "24h", "72h"], "contact_interval": "0s"},
        recovery={
            "links": True,
            "base_url": "https://shop.example",
            "secret": "recovery-browser-test-secret-0123",
            "attribution_window": "2d",
        },
    )
    writer = Tracker(settings)
    writer.migrate()
    with freeze_time(START) as clock:
        scenario(writer, receiver, clock)
    writer.shutdown()
    # the page's tracker sees the moment of the scenario's end on its own clock, so the browser
    # and the server need no frozen time
    viewer = Tracker(settings, clock=lambda: SEEN_AT)
    with Served(shop(viewer)) as served:
        driver.get(f"{served.url}/csp-probe")
        assert driver.title == "probe"  # the inline script was refused …
        assert any("Content Security Policy" in m for m in severe(driver))  # … and reported

        driver.get(f"{served.url}{PAGE}?days=7")
        assert driver.title.startswith("Recovery")
        assert severe(driver) == []

        charts = driver.find_elements(By.CSS_SELECTOR, "div.card > svg[role=img]")
        ids = [c.find_element(By.XPATH, "..").get_attribute("id") for c in charts]
        assert ids == ["chart-activity", "chart-revenue-1", "chart-revenue-2", "chart-funnel"]
        for chart in charts:
            box = chart.rect
            assert box["width"] > 800 and box["height"] > 250, box
            assert chart.get_attribute("aria-label")
        activity = driver.find_element(By.ID, "chart-activity")
        drawn = [
            bar.rect["height"]
            for bar in activity.find_elements(By.CSS_SELECTOR, "rect.bar[data-series=delivered]")
        ]
        assert len(drawn) == 7 and sum(h > 5 for h in drawn) == 3  # the three days with reminders
        assert "Reminders delivered: 6" in activity.text

        whole = tmp_path / "recovery.png"
        assert driver.save_screenshot(str(whole))
        page = png_pixels(whole.read_bytes())
        assert len(set(page)) > 50  # text, bars and lines, not a blank page
        assert sum(p != (255, 255, 255) for p in page) > len(page) // 10

        chart_shot = tmp_path / "recovery-activity.png"
        chart_shot.write_bytes(activity.screenshot_as_png)
        pixels = png_pixels(chart_shot.read_bytes())
        blue, orange, green = (0x2F, 0x6F, 0xDE), (0xD9, 0x82, 0x2B), (0x1A, 0x7F, 0x37)
        assert all(pixels.count(color) > 20 for color in (blue, orange, green))
        assert severe(driver) == []
    viewer.engine.dispose()
    writer.engine.dispose()


def test_a_long_period_still_fits_the_page(
    driver: Any, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    tracker = Tracker(make_settings(), clock=lambda: SEEN_AT)
    tracker.migrate()
    with Served(shop(tracker)) as served:
        driver.get(f"{served.url}{PAGE}?days=400")
        assert severe(driver) == []
        chart = driver.find_element(By.CSS_SELECTOR, "#chart-activity svg")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert chart.rect["width"] > 800 and width <= 1280
        assert len(chart.find_elements(By.CSS_SELECTOR, "rect.bar")) == 3 * 400
        assert driver.save_screenshot(str(tmp_path / "recovery-400.png"))
    tracker.engine.dispose()

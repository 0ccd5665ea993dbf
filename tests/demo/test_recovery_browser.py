"""The demo shop's recovery link in real headless Chromium sessions: a cart filled in one browser
comes back in another one that opens the reminder's link, and a tampered link gets the plugin's
410 page. The demo is served on 127.0.0.1 as ``shop-events demo`` serves it (its scheduler off);
the reminder is made by a scan whose clock is moved past ``abandoned_cart.after`` and sent to the
demo's receiver.

A missing browser skips these tests locally with a message, and fails them in CI (``CI=true``):
see ``tests/browser.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from shop_events import Tracker
from shop_events.clock import utcnow
from shop_events.demo import catalog
from shop_events.demo.run import Demo
from shop_events.storage.tables import reminders
from shop_events.testing import Receiver
from sqlalchemy import select

from tests.browser import DESKTOP_AGENT, chromium, require_browser, wait_for

pytestmark = pytest.mark.slow

EMAIL = "zoe@example.com"

Browser = Callable[[], Any]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Starts headless Chromium sessions with a shopper's agent, each with a fresh profile (no
    cookies); quits them all."""
    require_browser()
    with contextlib.ExitStack() as sessions:
        yield lambda: sessions.enter_context(
            chromium(window=(1280, 1000), user_agent=DESKTOP_AGENT)
        )


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """The demo shop and its receiver on free loopback ports, the shop served in a thread."""
    with Demo(shop_port=0, receiver_port=0, db_path=tmp_path, scheduler=False) as running:
        serving = threading.Thread(target=running.serve_forever, daemon=True)
        serving.start()
        try:
            yield running
        finally:
            running.shutdown()
            serving.join(10)


def cart_products(driver: Any) -> dict[str, str]:
    """Product name → quantity, as the cart page shows them."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "form table tbody tr")
    return {
        row.find_element(By.CSS_SELECTOR, "td:nth-child(2) a").text: row.find_element(
            By.CSS_SELECTOR, "input[type=number]"
        ).get_attribute("value")
        for row in rows
    }


def add_to_cart(driver: Any, shop_url: str, product_id: int, quantity: int) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{shop_url}p/{product_id}")
    field = driver.find_element(By.CSS_SELECTOR, "form input[name=quantity]")
    field.clear()
    field.send_keys(str(quantity))
    driver.find_element(By.CSS_SELECTOR, "form[action='/cart/add'] button").click()
    wait_for(lambda: driver.title.startswith("Your cart"), "the cart page")


def send_reminders(demo: Demo) -> None:
    """One scan and one dispatch by a worker whose clock is past ``abandoned_cart.after``."""
    assert demo.tracker is not None
    settings = demo.tracker.settings
    ahead = settings.abandoned_cart.after + timedelta(seconds=5)
    worker = Tracker(settings, clock=lambda: utcnow() + ahead)
    try:
        assert worker.scan().abandoned == 1
        assert worker.dispatch().sent == 1
    finally:
        worker.shutdown()
        worker.engine.dispose()


def clicks(demo: Demo) -> int:
    assert demo.tracker is not None
    with demo.tracker.engine.connect() as conn:
        return int(conn.execute(select(reminders.c.clicks)).scalar_one())


def test_a_reminders_link_restores_the_cart_in_another_browser(
    demo: Demo, browser: Browser
) -> None:
    from selenium.webdriver.common.by import By

    shop = demo.shop_url
    first = browser()
    add_to_cart(first, shop, 5, 1)
    add_to_cart(first, shop, 7, 2)
    email = first.find_element(By.ID, "email")
    email.clear()
    email.send_keys(EMAIL)
    email.submit()
    wait_for(lambda: f"Saved: {EMAIL}" in first.page_source, "the saved email")
    filled = cart_products(first)
    names = [p.name for p in (catalog.get(5), catalog.get(7)) if p is not None]
    assert filled == {names[0]: "1", names[1]: "2"}

    send_reminders(demo)
    [event] = demo.receiver.events
    assert event["eventTypeKey"] == "abandoned_cart" and event["keyValue"] == EMAIL
    link = Receiver.params(event)["cart_url"]
    assert link.startswith(f"{shop}shop-events/r/")

    second = browser()  # another device: no cookie of the first session
    second.get(shop)
    assert "Cart (0)" in second.page_source
    second.get(link)
    wait_for(lambda: second.title.startswith("Your cart"), "the restored cart")
    assert second.current_url == f"{shop}cart"
    assert "Welcome back! Here is your cart." in second.page_source
    assert cart_products(second) == filled
    assert clicks(demo) == 1

    token = link.rsplit("/", 1)[-1]
    tampered = link[: -len(token)] + token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    second.get(tampered)
    wait_for(lambda: second.title == "This link is no longer valid", "the refused link's page")
    page = second.page_source
    assert token[:20] not in page and "abandoned_cart" not in page
    to_shop = second.find_element(By.ID, "to-shop")
    assert to_shop.get_attribute("href") == shop
    assert requests.get(tampered, timeout=5).status_code == 410
    to_shop.click()
    wait_for(lambda: second.current_url == shop, "the shop's home")
    assert clicks(demo) == 1


def test_the_header_leads_the_local_visitor_to_the_operator_pages(
    demo: Demo, browser: Browser
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser()
    titles = {
        "History": "Event history",
        "Health": "Health",
        "Dead letters": "Dead letters",
        "Recovery": "Recovery",
    }
    for label, title in titles.items():
        driver.get(demo.shop_url)
        nav = driver.find_element(By.ID, "operator-pages")
        nav.find_element(By.LINK_TEXT, label).click()
        wait_for(lambda t=title: driver.title.startswith(t), f"the {label} page")
        assert driver.current_url.startswith(f"{demo.shop_url}shop-events/admin/")
    # the same pages through a proxy (someone else's request) are refused
    proxied = requests.get(
        f"{demo.shop_url}shop-events/admin/health",
        headers={"X-Forwarded-For": "203.0.113.9"},
        timeout=5,
    )
    assert proxied.status_code == 403

"""The operator pages and the tracking script in a real headless Chromium (Debian ``chromium`` +
``chromium-driver``, driven by selenium): filter the history, open an event, preview a template,
replay a dead letter; a product page that includes the script reports a view and identifies.

A missing browser skips these tests locally with a message, and fails them in CI (``CI=true``),
where ``.ci/run`` installs the packages (see ``tests/browser.py``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from freezegun import freeze_time
from shop_events import Item, ShopEvents, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.tables import browses, outbox
from sqlalchemy import select, update

from tests.browser import DESKTOP_AGENT, Served, chromium, wait_for
from tests.support import SettingsFactory

pytestmark = pytest.mark.slow

SCREENSHOT = Path(tempfile.gettempdir()) / "shop_events_admin_event.png"
XSS = "<script>window.__xss = 1</script>"
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="80" height="80">'
    '<rect width="80" height="80" fill="#{color}"/></svg>'
)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile."""
    with chromium(window=(1280, 1100)) as browser:
        yield browser


def shop(tracker: Tracker, current_email: Callable[[], str | None] | None = None) -> Flask:
    app = Flask("browser-shop")
    app.secret_key = "browser-test-secret"
    ShopEvents(app, tracker=tracker, admin_access=lambda: True, current_email=current_email)

    @app.get("/img/<color>.svg")
    def image(color: str) -> Response:
        return Response(SVG.format(color=color[:6]), mimetype="image/svg+xml")

    @app.get("/p/<int:number>")
    def product(number: int) -> str:
        item = {"name": f"Product {number}", "price": "19.90", "sku": f"sku-{number}"}
        return (
            "<!doctype html><html><head><title>Product</title>"
            '<script src="/shop-events/static/shop-events.js" defer></script></head><body>'
            f"<h1>Product {number}</h1>"
            f"<div data-shop-events-product='{json.dumps(item)}'></div></body></html>"
        )

    return app


def rows_of(driver: Any, table: str, column: int = 1) -> list[str]:
    """The event ids linked in ``column`` of each row."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody td:nth-child({column}) a")
    return [c.text for c in cells]


def event_ids(driver: Any) -> list[int]:
    return [int(text) for text in rows_of(driver, "events")]


def outbox_row(tracker: Tracker, event_id: int) -> Any:
    with tracker.engine.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.id == event_id)).one()


def test_operator_pages_in_a_browser(driver: Any, tracker: Tracker) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with Served(shop(tracker)) as served:
        picture = f"{served.url}/img/d9534f.svg"
        products = [
            Item(
                name="Hair styler",
                price="341",
                url=f"{served.url}/p/1",
                imageurl=picture,
                brand="Le Petit Olivier",
                tags={"weight": "200"},
            ),
            Item(name=XSS, price="2341", imageurl=f"{served.url}/img/5b8def.svg", brand="Acqua"),
        ]
        with freeze_time("2024-03-01 10:00:00") as frozen:
            tracker.cart_updated("cart-1", email="ann@example.com", items=products, currency="EUR")
            tracker.custom_event("login", key_value="bob@example.com", params={"email": "b"})
            frozen.tick(timedelta(hours=2))
            tracker.scan()
        with tracker.engine.connect() as conn:
            cart_event, login_event = (
                r.id
                for r in conn.execute(
                    select(outbox.c.id, outbox.c.event_type_key).order_by(outbox.c.event_type_key)
                )
            )
        with tracker.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == cart_event)
                .values(
                    status=OutboxStatus.DEAD.value,
                    attempts=1,
                    response_status=400,
                    last_error=f"400: The event should have the following params {XSS}",
                )
            )

        driver.get(f"{served.url}/shop-events/admin/")
        assert driver.title.startswith("Event history")
        assert sorted(event_ids(driver)) == sorted([cart_event, login_event])

        # filter by type, then by email
        Select(driver.find_element(By.ID, "filter-type")).select_by_visible_text("login")
        driver.find_element(By.ID, "filter-apply").click()
        wait_for(lambda: event_ids(driver) == [login_event], "the type filter")
        driver.find_element(By.LINK_TEXT, "clear").click()
        email = driver.find_element(By.ID, "filter-email")
        email.send_keys("ANN@")
        email.submit()
        wait_for(lambda: event_ids(driver) == [cart_event], "the email filter")
        Select(driver.find_element(By.ID, "filter-status")).select_by_visible_text("sent")
        driver.find_element(By.ID, "filter-apply").click()
        wait_for(lambda: "No events match." in driver.page_source, "an empty result")

        # open the event: products with pictures, the exact body, the platform's answer
        driver.get(f"{served.url}/shop-events/admin/?email=ann")
        driver.find_element(By.LINK_TEXT, "abandoned_cart").click()
        wait_for(lambda: driver.find_elements(By.ID, "event-meta"), "the event page")
        assert driver.find_element(By.ID, "event-status").text == "dead"
        assert driver.find_element(By.ID, "event-response").text == "400"
        images = driver.find_elements(By.CSS_SELECTOR, "table.items img")
        assert images[0].get_attribute("src") == picture
        wait_for(
            lambda: all(driver.execute_script("return arguments[0].complete", i) for i in images),
            "the pictures",
        )
        assert all(
            driver.execute_script("return arguments[0].naturalWidth", i) == 80 for i in images
        )
        names = [
            td.text for td in driver.find_elements(By.CSS_SELECTOR, "table.items td:first-child")
        ]
        assert names == ["Hair styler", XSS]  # shown as text, not run
        assert driver.execute_script("return window.__xss") is None
        body = driver.find_element(By.ID, "body").text
        assert json.loads(body) == json.loads(outbox_row(tracker, cart_event).body)
        driver.save_screenshot(str(SCREENSHOT))

        # preview a template with the seed's own mistake
        area = driver.find_element(By.ID, "template")
        area.send_keys(
            "#foreach($item in $data.get('array'))\n"
            "<p>$!item.get('name')</p><img src=\"$!item.get('ImageUrl')\">\n#end\n"
        )
        driver.find_element(By.ID, "preview-button").click()
        wait_for(lambda: driver.find_elements(By.ID, "problems"), "the preview's problems")
        problems = driver.find_element(By.ID, "problems").text
        assert "case" in problems and "'imageurl' is" in problems
        frame = driver.find_element(By.CSS_SELECTOR, "iframe.preview")
        driver.switch_to.frame(frame)
        assert "Hair styler" in driver.find_element(By.TAG_NAME, "body").text
        driver.switch_to.default_content()
        assert driver.execute_script("return window.__xss") is None

        # replay it from the dead letters
        driver.find_element(By.LINK_TEXT, "Dead letters").click()
        wait_for(lambda: rows_of(driver, "dead", 2) == [str(cart_event)], "the dead letters")
        driver.find_element(By.CSS_SELECTOR, f"input[name=id][value='{cart_event}']").click()
        driver.find_element(By.ID, "replay-selected").click()
        wait_for(lambda: "1 dead event requeued." in driver.page_source, "the replay")
        assert outbox_row(tracker, cart_event).status == OutboxStatus.PENDING.value
        assert "No dead letters." in driver.page_source

        # health shows the requeued event as pending
        driver.find_element(By.LINK_TEXT, "Health").click()
        wait_for(lambda: driver.find_elements(By.ID, "count-pending"), "the health page")
        assert driver.find_element(By.ID, "count-pending").text == "2"
        assert driver.execute_script("return window.__xss") is None


def test_tracking_script_reports_a_product_view_and_identifies(
    driver: Any, make_settings: SettingsFactory
) -> None:
    tracker = Tracker(make_settings(web={"shop_hosts": ["127.0.0.1"]}))
    tracker.migrate()
    signed_in: list[str | None] = [None]

    def stored() -> list[Any]:
        with tracker.engine.connect() as conn:
            return list(conn.execute(select(browses)))

    with Served(shop(tracker, current_email=lambda: signed_in[0])) as served:
        # the default agent says HeadlessChrome: the tracker's bot rules drop it
        driver.get(f"{served.url}/p/0")
        headless = driver.execute_script("return navigator.userAgent")
        assert "HeadlessChrome" in headless
        assert driver.execute_async_script(
            "window.shopEvents.productViewed({name: 'Bot view', price: '1'}).then(arguments[0])"
        )
        assert stored() == []

        driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": DESKTOP_AGENT})
        driver.delete_all_cookies()
        driver.get(f"{served.url}/p/7")
        rows = wait_for(stored, "the product view in the database")
        (row,) = rows
        assert json.loads(row.items)[0] == {"name": "Product 7", "price": "19.90", "sku": "sku-7"}
        cookie = wait_for(lambda: driver.get_cookie("se_vid"), "the visitor cookie")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert row.visitor_id == cookie["value"] and row.email is None
        assert "se_vid" not in driver.execute_script("return document.cookie")

        identify = "window.shopEvents.identify(arguments[0]).then(arguments[1])"
        # nobody is signed in: the page may not bind an address (web.identify = "signed-in")
        assert driver.execute_async_script(identify, "Ann@Example.com") is False
        (row,) = stored()
        assert row.email is None
        signed_in[0] = "ann@example.com"
        assert driver.execute_async_script(identify, "Ann@Example.com") is True
        signed_in[0] = None
        (row,) = stored()
        assert row.browse_key == "e:ann@example.com" and row.visitor_id == cookie["value"]

        refused = driver.execute_async_script(
            "window.shopEvents.productViewed({name: 'No price'}).then(arguments[0])"
        )
        assert refused is False  # a 400 naming item.price, logged to the console
        driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": headless})
    tracker.engine.dispose()

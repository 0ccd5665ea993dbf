"""The demo shop against a real receiver, the demo runner, and the shopper simulation."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, get_flashed_messages, session
from flask.testing import FlaskClient
from freezegun import freeze_time
from shop_events import Settings, Tracker
from shop_events.demo import catalog
from shop_events.demo.run import Demo, run_demo
from shop_events.demo.shop import (
    OPERATOR_PAGES,
    Order,
    create_shop,
    restore_cart,
    shop_state,
    tracker_of,
)
from shop_events.demo.simulate import simulate, types_in
from shop_events.storage.tables import carts, metadata, outbox
from shop_events.testing import Receiver
from sqlalchemy import func, select

KEY = "demo-test-key"
START = "2024-03-01 10:00:00"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SHOP_ROOT = "http://localhost"
"""The shop's public URL: the test client's own root."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(api_key=KEY) as r:
        yield r


@pytest.fixture
def shop(receiver: Receiver, tmp_path: Path) -> Iterator[Flask]:
    settings = Settings.load(
        {
            "api": {"base_url": receiver.base_url, "key": KEY},
            "database": {"url": f"sqlite:///{tmp_path / 'shop.db'}"},
            "abandoned_cart": {"after": "1m"},
            "scheduler": {"enabled": False},
        }
    )
    app = create_shop(
        settings, public_url=SHOP_ROOT, receiver_url=f"http://127.0.0.1:{receiver.port}/"
    )
    app.testing = True
    tracker = tracker_of(app)
    tracker.migrate()
    yield app
    shop_state(app).close()
    tracker.shutdown()
    tracker.engine.dispose()


def add(client: FlaskClient, product_id: int, quantity: int = 1) -> None:
    response = client.post("/cart/add", data={"product_id": product_id, "quantity": quantity})
    assert response.status_code == 302


def cart_rows(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(carts)).all())


def outbox_rows(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)).all())


def test_idle_cart_with_email_becomes_one_abandoned_cart_event(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_of(shop)
    client = shop.test_client()
    with freeze_time(START) as frozen:
        add(client, 1)
        add(client, 3, quantity=2)
        assert client.post("/cart/email", data={"email": "ann@example.com"}).status_code == 302
        [cart] = cart_rows(tracker)
        assert (cart.email, cart.state) == ("ann@example.com", "active")

        frozen.tick(timedelta(seconds=59))
        assert tracker.scan().abandoned == 0
        frozen.tick(timedelta(seconds=2))
        assert tracker.scan().abandoned == 1
        tracker.dispatch()

    [event] = receiver.events
    assert event["eventTypeKey"] == "abandoned_cart"
    assert event["keyValue"] == "ann@example.com"
    params = Receiver.params(event)
    assert params["email"] == "ann@example.com"
    link = params["cart_url"]
    assert link.startswith(f"{SHOP_ROOT}/shop-events/r/")  # a recovery link
    items = Receiver.items(event)
    hair_styler, shampoo = catalog.get(1), catalog.get(3)
    assert hair_styler is not None and shampoo is not None
    assert [i["name"] for i in items] == [hair_styler.name, shampoo.name]
    assert items[0] == {
        "name": "Hair styler",
        "price": "341.00",
        "url": "http://localhost/p/1",
        "imageurl": "http://localhost/img/1.svg",
        "brand": "Le Petit Olivier",
        "quantity": "1",
        "sku": "SKU-0001",
        "tags_weight": "200",
        "tags_oldprice": "467.00",
    }
    assert items[1]["quantity"] == "2"
    assert [r.status for r in receiver.requests] == [200]
    assert receiver.requests[0].headers["Content-Type"].startswith("application/json")
    assert [row.status for row in outbox_rows(tracker)] == ["sent"]

    # The link in the reminder brings a new browser back to that cart (before it expires).
    other = shop.test_client()
    with freeze_time(START, tick=True):  # the session cookie is dated too
        opened = other.get(link.removeprefix(SHOP_ROOT), headers={"User-Agent": BROWSER})
        assert (opened.status_code, opened.location) == (303, "/cart")
        page = other.get("/cart").get_data(as_text=True)
    assert "Bond shampoo" in page and cart.cart_id in page
    assert "Welcome back! Here is your cart." in page
    # The shop's own restore URL, where a link leads without the callback, does too.
    third = shop.test_client()
    assert third.get(f"/cart/restore/{cart.cart_id}").status_code == 302
    assert cart.cart_id in third.get("/cart").get_data(as_text=True)

    # The receiver's history page shows the cart's products.
    history = requests.get(f"http://127.0.0.1:{receiver.port}/", timeout=5).text
    assert "abandoned_cart" in history and "<th>tags_oldprice</th>" in history


def reminder_link(shop: Flask, receiver: Receiver, frozen: Any, client: FlaskClient) -> str:
    """Products in ``client``'s cart with an email, left alone past ``after``: the path of the
    reminder's recovery link."""
    tracker = tracker_of(shop)
    add(client, 2)
    add(client, 9, quantity=3)
    client.post("/cart/email", data={"email": "ida@example.com"})
    frozen.tick(timedelta(minutes=2))
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    [event] = [e for e in receiver.events if e["eventTypeKey"] == "abandoned_cart"]
    link: str = Receiver.params(event)["cart_url"]
    assert link.startswith(f"{SHOP_ROOT}/shop-events/r/")
    return link.removeprefix(SHOP_ROOT)


def test_a_link_to_a_bought_cart_rebuilds_it_from_the_reminders_products(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_of(shop)
    first = shop.test_client()
    with freeze_time(START, tick=True) as frozen:
        path = reminder_link(shop, receiver, frozen, first)
        assert first.post("/checkout", data={"email": "ida@example.com"}).status_code == 200
        other = shop.test_client()
        opened = other.get(path, headers={"User-Agent": BROWSER})
        assert (opened.status_code, opened.location) == (303, "/cart")
        page = other.get("/cart").get_data(as_text=True)
    assert "We put the products of your cart back in it." in page
    assert "Magnolia Nobile" in page and "Clay mask" in page
    assert 'name="qty_9" value="3"' in page
    assert 'value="ida@example.com"' in page  # the same contact, so it can be reminded again
    rows = {row.cart_id: row for row in cart_rows(tracker)}
    assert len(rows) == 2  # the bought cart and the rebuilt one
    [rebuilt] = [row for row in rows.values() if row.state == "active"]
    assert rebuilt.email == "ida@example.com"
    assert [i["name"] for i in json.loads(rebuilt.items)] == ["Magnolia Nobile", "Clay mask"]


def test_a_link_whose_products_left_the_catalog_says_the_cart_is_gone(shop: Flask) -> None:
    with shop.test_request_context("/shop-events/r/x"):
        response = restore_cart("c-gone", [{"name": "Old thing", "sku": "SKU-9999"}])
        assert (response.status_code, response.location) == (303, "/cart")
        assert "cart_id" not in session
        assert get_flashed_messages() == ["That cart is no longer available."]


def test_operator_pages_are_open_to_the_local_visitor_only(shop: Flask) -> None:
    client = shop.test_client()
    index = client.get("/").get_data(as_text=True)
    assert 'id="operator-pages"' in index
    for label, path in OPERATOR_PAGES:
        assert f'<a href="{path}">{label}</a>' in index
        assert client.get(path).status_code == 200, path
    assert client.get("/shop-events/admin/", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200

    remote = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/shop-events/admin/", environ_base=remote).status_code == 403
    assert 'id="operator-pages"' not in client.get("/", environ_base=remote).get_data(as_text=True)
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        proxied = client.get("/shop-events/admin/health", headers={header: "203.0.113.9"})
        assert proxied.status_code == 403, header


def test_cart_without_email_is_not_emitted(shop: Flask, receiver: Receiver) -> None:
    tracker = tracker_of(shop)
    with freeze_time(START) as frozen:
        add(shop.test_client(), 2)
        frozen.tick(timedelta(minutes=5))
        result = tracker.scan()
        tracker.dispatch()
    assert (result.abandoned, result.suppressed) == (0, 1)
    assert receiver.requests == []


def test_checkout_before_the_timeout_sends_the_order_and_no_reminder(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_of(shop)
    client = shop.test_client()
    with freeze_time(START) as frozen:
        add(client, 5)
        add(client, 12, quantity=3)
        client.post("/cart/email", data={"email": "bob@example.com"})
        frozen.tick(timedelta(seconds=30))
        response = client.post("/checkout", data={"email": "bob@example.com"})
        assert response.status_code == 200
        assert "Thank you for your order" in response.get_data(as_text=True)
        frozen.tick(timedelta(minutes=5))
        assert tracker.scan().abandoned == 0
        tracker.dispatch()
    [event] = receiver.events
    assert event["eventTypeKey"] == "orderCreated"
    params = Receiver.params(event)
    assert params["total"] == "92.80"  # 64.00 + 3 × 9.60
    assert [i["name"] for i in Receiver.items(event)] == ["Silk pillowcase", "Lip balm trio"]
    [cart] = cart_rows(tracker)
    assert cart.state == "converted"
    assert client.get("/cart").get_data(as_text=True).count("Your cart is empty") == 1


def test_order_after_the_scan_supersedes_the_queued_reminder(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_of(shop)
    client = shop.test_client()
    with freeze_time(START) as frozen:
        add(client, 7)
        client.post("/cart/email", data={"email": "cy@example.com"})
        frozen.tick(timedelta(minutes=2))
        assert tracker.scan().abandoned == 1
        client.post("/checkout", data={"email": "cy@example.com"})
        tracker.dispatch()
    assert [e["eventTypeKey"] for e in receiver.events] == ["orderCreated"]
    assert sorted(r.status for r in outbox_rows(tracker)) == ["sent", "superseded"]


def test_emptied_cart_is_cleared_and_never_emitted(shop: Flask, receiver: Receiver) -> None:
    tracker = tracker_of(shop)
    client = shop.test_client()
    with freeze_time(START) as frozen:
        add(client, 4)
        add(client, 6)
        client.post("/cart/email", data={"email": "dee@example.com"})
        client.post("/cart/remove/4")
        assert json.loads(cart_rows(tracker)[0].items)[0]["name"] == "Bamboo brush"
        client.post("/cart/update", data={"qty_6": "0"})
        [cart] = cart_rows(tracker)
        assert cart.state == "cleared"
        frozen.tick(timedelta(minutes=10))
        tracker.scan()
        tracker.dispatch()
    assert receiver.requests == []


def test_quantity_change_is_a_cart_update(shop: Flask) -> None:
    tracker = tracker_of(shop)
    client = shop.test_client()
    add(client, 9)
    client.post("/cart/update", data={"qty_9": "4"})
    [cart] = cart_rows(tracker)
    assert json.loads(cart.items)[0]["quantity"] == "4"
    client.post("/cart/clear")
    assert cart_rows(tracker)[0].state == "cleared"


def test_pages(shop: Flask) -> None:
    client = shop.test_client()
    index = client.get("/").get_data(as_text=True)
    assert all(p.name.replace("&", "&amp;") in index for p in catalog.PRODUCTS)
    assert "carts are abandoned after 1m of inactivity" in index
    product = client.get("/p/2")
    assert product.status_code == 200 and "Acqua Di Parma" in product.get_data(as_text=True)
    assert client.get("/p/99").status_code == 404
    image = client.get("/img/2.svg")
    assert image.mimetype == "image/svg+xml" and image.get_data(as_text=True).startswith("<svg")
    assert client.get("/img/99.svg").status_code == 404
    assert "Your cart is empty" in client.get("/cart").get_data(as_text=True)
    add(client, 2)
    status = client.get("/status").get_data(as_text=True)
    assert "(yours)" in status and "active" in status
    assert KEY not in status


def test_sign_up_creates_the_contact_and_gives_the_cart_its_email(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_of(shop)
    client = shop.test_client()
    add(client, 1)
    assert cart_rows(tracker)[0].email is None
    response = client.post("/account", data={"email": "fay@example.com", "first_name": "Fay"})
    assert response.status_code == 302
    assert cart_rows(tracker)[0].email == "fay@example.com"  # the cart is hers now
    page = client.get("/cart").get_data(as_text=True)
    assert "Fay" in page and "Sign out" in page
    again = shop.test_client().post("/account", data={"email": "fay@example.com"})
    assert again.status_code == 302  # signed in again: not a new contact
    tracker.dispatch()
    [event] = receiver.events
    assert event["eventTypeKey"] == "create_contact"
    assert Receiver.params(event) == {"email": "fay@example.com", "firstName": "Fay"}


CAPTURE_HOOKS = (
    "cart_updated",
    "cart_cleared",
    "order_placed",
    "order_status_changed",
    "product_viewed",
    "identify",
    "registration_started",
    "registration_completed",
    "logged_in",
    "password_changed",
    "password_reset_requested",
    "contact_upserted",
    "opted_out",
    "opted_in",
    "custom_event",
)


def plugin_row_counts(tracker: Tracker) -> dict[str, int]:
    with tracker.engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        }


def test_the_views_never_call_the_tracker(shop: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo is installed the automatic way: with the model capture stopped and every hook
    made to fail, a whole shopping journey still works and the plugin records nothing."""
    tracker = tracker_of(shop)

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a view called the tracker")

    for name in CAPTURE_HOOKS:
        assert callable(getattr(tracker, name)), name
        monkeypatch.setattr(tracker, name, refuse)
    shop_state(shop).capture.close()
    before = plugin_row_counts(tracker)

    client = shop.test_client()
    add(client, 5)
    add(client, 12, quantity=3)
    assert client.post("/cart/remove/5").status_code == 302
    add(client, 5)
    assert client.post("/cart/email", data={"email": "gil@example.com"}).status_code == 302
    account = client.post("/account", data={"email": "gil@example.com", "first_name": "Gil"})
    assert account.status_code == 302
    response = client.post("/checkout", data={"email": "gil@example.com"})
    assert "Thank you for your order" in response.get_data(as_text=True)
    add(client, 1)
    assert client.post("/cart/clear").status_code == 302

    assert plugin_row_counts(tracker) == before
    db = shop_state(shop).db
    [order] = db.scalars(select(Order)).all()
    db.remove()
    assert order.email == "gil@example.com"


def test_bad_email_is_explained_not_recorded(shop: Flask) -> None:
    client = shop.test_client()
    add(client, 1)
    response = client.post("/cart/email", data={"email": "not-an-email"}, follow_redirects=True)
    assert "Please check the email address" in response.get_data(as_text=True)
    assert cart_rows(tracker_of(shop))[0].email is None
    assert client.post("/checkout", data={"email": "nope"}).status_code == 200


def test_checkout_of_an_empty_cart_redirects(shop: Flask) -> None:
    assert shop.test_client().post("/checkout", data={"email": "a@b.co"}).status_code == 302


def test_demo_serves_shop_and_receiver_on_loopback(tmp_path: Path) -> None:
    with Demo(shop_port=0, receiver_port=0, db_path=tmp_path, scheduler=False) as demo:
        demo.out = io.StringIO()
        assert demo.server is not None and demo.tracker is not None
        banner = "\n".join(demo.banner())
        assert demo.shop_url in banner and demo.receiver.url in banner
        assert "carts are abandoned after 1m of inactivity" in banner
        assert demo.shop_url.startswith("http://127.0.0.1:")
        serving = threading.Thread(target=demo.serve_forever)
        serving.start()
        try:
            with requests.Session() as browser:
                added = browser.post(
                    f"{demo.shop_url}cart/add", data={"product_id": "1"}, timeout=5
                )
                assert added.status_code == 200 and "Hair styler" in added.text
                browser.post(f"{demo.shop_url}cart/email", data={"email": "e@example.com"})
            [cart] = cart_rows(demo.tracker)
            item = json.loads(cart.items)[0]
            assert item["url"] == f"{demo.shop_url}p/1"  # absolute URLs of the running shop
            assert cart.email == "e@example.com"
        finally:
            demo.shutdown()
            serving.join(10)
    assert (tmp_path / "shop_events_demo.db").exists()


def test_run_demo_prints_the_urls_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def interrupted(self: Demo) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Demo, "serve_forever", interrupted)
    run_demo(shop_port=0, receiver_port=0, db_path=tmp_path / "demo.db")
    out = capsys.readouterr().out
    assert "shop:           http://127.0.0.1:" in out
    assert "event history:  http://127.0.0.1:" in out
    assert "carts are abandoned after 1m of inactivity" in out
    assert (tmp_path / "demo.db").exists()


FLOW_TYPES = (
    "abandoned_cart",
    "abandoned_browse",
    "unfinished_registration",
    "orderCreated",
    "orderUpdated",
    "orderDelivered",
    "orderCancelled",
    "orders_api",
    "login",
    "password_change",
    "password_reset",
    "create_contact",
    "update_contact",
)
ACTIVITY_STATES = ("active", "abandoned", "converted", "cleared", "completed", "suppressed")


def test_simulate_accounts_for_every_event() -> None:
    out = io.StringIO()
    counts = simulate(68, seed=1, out=out)

    assert counts["lost"] == 0 and counts["phantom"] == 0
    assert counts["pending"] == 0
    for table in ("carts", "browses", "registrations"):
        assert counts[f"{table}.active"] == 0 and counts[f"{table}.unknown"] == 0, table
        assert counts[table] == sum(counts[f"{table}.{s}"] for s in ACTIVITY_STATES), table
    assert counts["carts"] == sum(
        counts[k] for k in ("converted", "cleared", "suppressed", "left_abandoned", "active")
    )
    assert counts["enqueued"] == (
        counts["delivered"] + counts["dead"] + counts["superseded"] + counts["pending"]
    )
    assert counts["sent"] == counts["delivered"]
    assert counts["accepted"] == counts["delivered"] + counts["duplicates"]
    assert counts["rearmed"] == counts["reminders"] - counts["abandoned"]
    assert counts["reminders"] == counts["abandoned_cart.queued"]
    assert counts["orders"] == counts["orderCreated.queued"]

    # every event type, and the numbers of each add up to the totals
    types = types_in(counts)
    assert set(FLOW_TYPES) <= set(types)
    for measure, total in (
        ("queued", "enqueued"),
        ("delivered", "delivered"),
        ("superseded", "superseded"),
        ("dead", "dead"),
        ("pending", "pending"),
        ("lost", "lost"),
    ):
        assert sum(counts[f"{t}.{measure}"] for t in types) == counts[total], measure
    for kind in types:
        assert counts[f"{kind}.queued"] == sum(
            counts[f"{kind}.{m}"] for m in ("delivered", "superseded", "dead", "pending")
        ), kind
    for kind in FLOW_TYPES:
        assert counts[f"{kind}.delivered"] > 0, kind

    # every kind of shopper showed up, in the tables
    for key in ("abandoned", "converted", "cleared", "suppressed", "superseded", "rearmed"):
        assert counts[key] > 0, key
    for key in (
        "browses.abandoned",
        "browses.converted",
        "browses.suppressed",
        "registrations.abandoned",
        "registrations.completed",
    ):
        assert counts[key] > 0, key
    assert counts["browses.abandoned"] == counts["abandoned_browse.queued"]
    assert counts["registrations.abandoned"] == counts["unfinished_registration.queued"]
    assert counts["registrations.completed"] == counts["create_contact.queued"]
    # an order's events and its Orders API rows: one of each per order and status change
    order_events = sum(
        counts[f"{t}.queued"]
        for t in ("orderCreated", "orderUpdated", "orderDelivered", "orderCancelled")
    )
    assert counts["orders_api.queued"] == order_events
    assert counts["abandoned_cart.superseded"] > 0  # orders and opt-outs while queued

    assert counts["dead"] == counts["refused"] >= 1  # the one scripted 400
    assert counts["failed"] > counts["refused"]  # the other faults were retried
    text = out.getvalue()
    assert "68 shoppers" in text and "every event accounted for" in text
    for kind in FLOW_TYPES:
        assert f"\n  {kind} " in text, kind
    for table in ("carts", "browses", "registrations"):
        assert f"\n  {table} " in text, table


def test_simulate_without_faults() -> None:
    counts = simulate(17, seed=7, faults=False, out=None)
    assert counts["lost"] == 0
    assert counts["dead"] == 0 and counts["duplicates"] == 0 and counts["failed"] == 0
    assert counts["accepted"] == counts["delivered"] == counts["sent"]
    assert counts["enqueued"] == counts["delivered"] + counts["superseded"]
    assert counts["requests"] <= counts["accepted"]  # Orders API requests carry several

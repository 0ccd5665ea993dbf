"""Proof: the second test shop (``tests/shops/second``), a shop shaped like real ones and not
written for the plugin, installs it by the README's steps (the block between the
``shop-events`` markers in its ``create_app``) and, on its own database on SQLite, PostgreSQL
and MariaDB, its whole flow through its own pages reaches a real receiver as exactly the
expected events.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo
from freezegun import freeze_time
from shop_events import Tracker
from shop_events.integrations.flask.extension import CAPTURE_KEY, tracker_for
from shop_events.integrations.models.listeners import same_database
from shop_events.storage.tables import carts
from shop_events.testing import Receiver
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.shops import logging_restored
from tests.shops.second import app as second_app
from tests.shops.second.models import Cart, Order, User, db
from tests.support import API_KEY, REPO

START = "2026-12-07 09:00:00"
SHOP = "https://shop.example"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """What a deployment puts in the environment: the API key. The test also points the API at
    the receiver and drives scan and dispatch itself instead of the in-process scheduler."""
    monkeypatch.setenv("SHOP_EVENTS_API_KEY", API_KEY)
    monkeypatch.setenv("SHOP_EVENTS_API_BASE_URL", receiver.base_url)
    monkeypatch.setenv("SHOP_EVENTS_SCHEDULER_ENABLED", "false")


def flask(app: Flask, *args: str) -> Result:
    """``flask …`` in the shop's project, with the commands of installed packages."""
    group = FlaskGroup(create_app=lambda: app)
    result = CliRunner().invoke(group, list(args), obj=ScriptInfo(create_app=lambda: app))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


@pytest.fixture
def shop(environment: None, empty_database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The shop on its own database: on SQLite its default ``sqlite:///second.db`` in the
    instance folder; elsewhere an empty database of the server. Set up as an operator does:
    the shop's migrations, the plugin's, the catalogue."""
    sqlite = empty_database_url.startswith("sqlite")
    config = {} if sqlite else {"SQLALCHEMY_DATABASE_URI": empty_database_url}
    app = second_app.create_app(config, instance_path=str(tmp_path / "instance"))
    with logging_restored():
        flask(app, "db", "upgrade")
        flask(app, "shop-events", "migrate")  # README step 4
        flask(app, "seed")
        flask(app, "db", "check")  # fails if autogenerate would change anything: the plugin's
        # tables are in the database now, and the shop's migrations leave them alone
    with app.app_context():  # one database: captures join the shop's transactions
        assert same_database(db.engine, tracker_for(app).engine)
        if sqlite:
            assert db.engine.url.database == str(tmp_path / "instance" / "second.db")
    yield app
    app.extensions[CAPTURE_KEY].close()
    tracker = tracker_for(app)
    tracker.shutdown()
    tracker.engine.dispose()
    with app.app_context():
        db.engine.dispose()


class Browser:
    """A shopper's browser: it loads a page and submits one of its forms, CSRF token included."""

    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()

    def get(self, url: str) -> str:
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return response.get_data(as_text=True)

    def submit(self, page: str, action: str, expect: int = 302, **fields: Any) -> TestResponse:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(page))
        assert found, f"no form on {page}"
        response = self.client.post(action, data={"csrf_token": found.group(1), **fields})
        assert response.status_code == expect, response.get_data(as_text=True)[:500]
        return response

    def cart_lines(self) -> list[int]:
        """The ids of the lines on the cart page (each line has an update and a remove form)."""
        return [int(x) for x in re.findall(r'name="item_id" value="(\d+)"', self.get("/cart"))][::2]


def cart_of(app: Flask, email: str) -> Cart:
    with app.app_context():
        user = User.query.filter_by(email=email).one()
        found: Cart = Cart.query.filter_by(user_id=user.id).one()
        return found


def plugin_cart(tracker: Tracker, cart_id: int) -> Any:
    with tracker.engine.connect() as conn:
        return conn.execute(select(carts).where(carts.c.cart_id == str(cart_id))).first()


@pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")  # its env.py
def test_the_whole_flow_of_the_second_shop_reaches_the_receiver_as_exactly_the_expected_events(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_for(shop)
    ann, bob, cy = Browser(shop), Browser(shop), Browser(shop)
    with freeze_time(START) as clock:
        ann.submit("/", "/signup", email="ann@example.com", first_name="Ann")
        ann.get("/products/1")
        ann.submit("/products/1", "/cart/add", product_id=1, qty=1)
        ann.submit("/products/2", "/cart/add", product_id=2, qty=2)
        ann.submit("/", "/cart/add", product_id=3)
        styler, _, oil = ann.cart_lines()
        ann.submit("/cart", "/cart/update", item_id=styler, qty=3)
        ann.submit("/cart", "/cart/remove", item_id=oil)
        ann_cart = cart_of(shop, "ann@example.com")
        before = plugin_cart(tracker, ann_cart.id)
        ann.submit("/cart", "/cart/gift-wrap", expect=500)  # the request fails and rolls back
        assert plugin_cart(tracker, ann_cart.id) == before
        placed = ann.submit("/cart", "/checkout").headers["Location"]
        ann_order = int(placed.rsplit("/", 1)[1])
        assert "total 1084.90" in ann.get(placed)
        ann.submit(placed, f"{placed}/pay")
        ann.submit(placed, f"{placed}/cancel")

        bob.submit("/", "/cart/add", product_id=3, qty=2)  # as a guest, then signs up
        bob.submit("/", "/signup", email="bob@example.com", first_name="Bob")
        [bob_line] = bob.cart_lines()
        bob.submit("/cart", "/cart/update", item_id=bob_line, qty=-1)  # the shop takes it
        bob_cart = cart_of(shop, "bob@example.com")

        cy.submit("/", "/signup", email="cy@example.com", first_name="Cy")
        cy.submit("/products/2", "/cart/add", product_id=2, qty=1)
        delivered = cy.submit("/cart", "/checkout").headers["Location"]
        cy_order = int(delivered.rsplit("/", 1)[1])
        cy.submit(delivered, f"{delivered}/pay")
        cy.submit(delivered, f"{delivered}/ship", ship_status="shipped")
        cy.submit(delivered, f"{delivered}/ship", ship_status="delivered")

        clock.tick(timedelta(minutes=61))
        assert tracker.scan().abandoned == 0  # Bob's cart of -1 is not reminded, nor its past
        bob.submit("/cart", "/cart/update", item_id=bob_line, qty=1)
        clock.tick(timedelta(minutes=59))
        assert tracker.scan().abandoned == 0
        clock.tick(timedelta(minutes=2))
        assert tracker.scan().abandoned == 1
        tracker.dispatch()

    events = receiver.events
    assert sorted((e["eventTypeKey"], e["keyValue"]) for e in events) == [
        ("abandoned_cart", "bob@example.com"),
        ("create_contact", "ann@example.com"),
        ("create_contact", "bob@example.com"),
        ("create_contact", "cy@example.com"),
        ("orderCancelled", "ann@example.com"),
        ("orderCreated", "ann@example.com"),
        ("orderCreated", "cy@example.com"),
        ("orderDelivered", "cy@example.com"),
        ("orderUpdated", "ann@example.com"),
        ("orderUpdated", "cy@example.com"),
    ]
    assert [r.status for r in receiver.requests] == [200] * 10
    contacts = {
        e["keyValue"]: Receiver.params(e) for e in events if e["eventTypeKey"] == "create_contact"
    }
    assert contacts == {
        f"{name.lower()}@example.com": {"email": f"{name.lower()}@example.com", "firstName": name}
        for name in ("Ann", "Bob", "Cy")
    }

    def order_events(order_id: int) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        return [
            (e["eventTypeKey"], Receiver.params(e), Receiver.items(e))
            for e in events
            if e["eventTypeKey"].startswith("order")
            and Receiver.params(e)["order_id"] == str(order_id)
        ]

    ann_items = [
        {"name": "Hair styler", "price": "341.00", "quantity": "3"},
        {"name": "Bond shampoo", "price": "28.50", "quantity": "2"},
    ]
    assert [(t, p["status"], p["total"], i) for t, p, i in order_events(ann_order)] == [
        ("orderCreated", "NEW", "1084.90", ann_items),
        ("orderUpdated", "PAID", "1084.90", ann_items),
        ("orderCancelled", "CANCELED", "1084.90", ann_items),
    ]
    cy_items = [{"name": "Bond shampoo", "price": "28.50", "quantity": "1"}]
    assert [(t, p["status"], p["total"], i) for t, p, i in order_events(cy_order)] == [
        ("orderCreated", "NEW", "33.40", cy_items),
        ("orderUpdated", "PAID", "33.40", cy_items),
        ("orderDelivered", "DELIVERED", "33.40", cy_items),
    ]
    [reminder] = [e for e in events if e["eventTypeKey"] == "abandoned_cart"]
    assert Receiver.items(reminder) == [{"name": "Argan oil", "price": "19.90", "quantity": "1"}]
    params = Receiver.params(reminder)
    assert (params["cart_id"], params["total"], params["cart_url"]) == (
        str(bob_cart.id),
        "19.90",
        f"{SHOP}/cart/restore/{bob_cart.token}",
    )

    health = tracker.health()
    assert [(e.mapping, e.field, e.count) for e in health.capture_errors] == [
        ("cart", "items[].quantity", 1)  # Bob's -1, refused and counted
    ]
    assert health.kept_total == 0
    assert {status: n for status, n in tracker.stats().items() if n} == {"sent": 10}


# -- the install, counted ----------------------------------------------------------------------


def install_block() -> list[str]:
    """The lines the install adds to the shop's ``create_app``: neither blank nor comments."""
    source = inspect.getsource(second_app.create_app)
    block = source.split("# shop-events: begin")[1].split("# shop-events: end")[0]
    return [x.strip() for x in block.splitlines() if x.strip() and not x.strip().startswith("#")]


def test_the_install_takes_the_lines_the_readme_says_and_shows() -> None:
    from tests.integrations.models.test_install_shop import install_block as first_shops

    lines = install_block()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Install into your shop")[1].split("\n## ")[0]
    words = " ".join(section.split())
    assert f"the install is {len(first_shops())} lines (step 3)" in words
    assert f"the install is {len(lines)} lines (shown after step 3)" in words
    assert f"this is its whole install, {len(lines)} lines" in words
    shown = section.split("<!-- the second shop's install -->")[1].split("```python")[1]
    untyped = [re.sub(r"(\w+): Any\) -> [\w |]+:", r"\1):", x) for x in lines]
    assert [x.strip() for x in shown.split("```")[0].splitlines() if x.strip()] == untyped


# -- the shop's own test suite, with the plugin installed ---------------------------------------

IN_MEMORY = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://", "WTF_CSRF_ENABLED": False}
"""The shop's own test configuration (``tests/shops/second/conftest.py``)."""


@pytest.fixture
def shop_under_test(tmp_path: Path) -> Iterator[Flask]:
    """The shop as its own test suite builds it: its tables by ``db.create_all()`` on
    ``sqlite://``, nothing of the plugin's set up, no API key."""
    app = second_app.create_app(IN_MEMORY, instance_path=str(tmp_path))
    with app.app_context():
        db.create_all()
    flask(app, "seed")
    yield app
    app.extensions[CAPTURE_KEY].close()
    tracker_for(app).engine.dispose()
    with app.app_context():
        db.engine.dispose()


def shop_a_little(app: Flask) -> None:
    """Three shoppers sign up and fill a cart; the last one checks out."""
    for n in range(3):
        client = app.test_client()
        signed = client.post("/signup", data={"email": f"s{n}@x.example", "first_name": "S"})
        assert signed.status_code == 302
        assert client.post("/cart/add", data={"product_id": 1}).status_code == 302
    assert client.post("/checkout").status_code == 302


def test_the_shops_own_tests_without_the_plugins_tables_hear_of_them_once(
    shop_under_test: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shop_events")
    shop_a_little(shop_under_test)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["shop_events.tracker"]
    assert loud[0].getMessage().startswith("the plugin's tables are missing in sqlite://")
    assert not tracker_for(shop_under_test).scheduler.running
    with shop_under_test.app_context():
        assert Order.query.one().total == Decimal("345.90")  # the shop's commits went on


def test_the_shops_own_tests_with_the_plugins_tables_in_memory_capture_without_jobs(
    shop_under_test: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_for(shop_under_test)
    tracker.migrate()
    caplog.set_level(logging.INFO, logger="shop_events")
    shop_a_little(shop_under_test)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "no jobs on the in-memory database sqlite://" in caplog.text
    assert not tracker.scheduler.running  # its one connection is every thread's
    assert {s: n for s, n in tracker.stats().items() if n} == {"pending": 4}  # 3 contacts, 1 order
    assert tracker.health().kept_total == 0

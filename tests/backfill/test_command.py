"""``flask shop-events backfill orders``: a small Flask-SQLAlchemy shop's past orders, read
through its ``OrderMapping`` in pages, selected by ``--since``/``--until``, with a progress bar,
resumable, delivered with ``--wait``; and ``shop-events backfill orders --capture`` without
Flask."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo
from flask_sqlalchemy import SQLAlchemy
from shop_events import Item, OrderMapping, Settings, ShopEvents, Tracker, capture_models
from shop_events.backfill import run as backfill_run
from shop_events.cli import cli
from shop_events.integrations.flask.extension import CAPTURE_KEY, tracker_for
from shop_events.integrations.models import CaptureModels
from shop_events.storage.tables import outbox
from shop_events.testing import Receiver
from sqlalchemy import DateTime, ForeignKey, Numeric, String, create_engine, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tests.support import API_KEY

db = SQLAlchemy()
FIRST = datetime(2024, 1, 1, 9, 0)
"""The first order's ``created_at`` (naive UTC, as the shop's column keeps it); one every
three days after it."""
ORDERS = 30
BROKEN = 27
"""The order whose product has no name: its ``item`` getter raises."""
NO_CUSTOMER = 25
"""The guest order: no customer, so no email."""


class Customer(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "hist_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))


class Product(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "hist_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "hist_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("hist_customer.id"))
    customer: Mapped[Customer | None] = relationship()
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.id")


class OrderLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "hist_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("hist_order.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("hist_product.id"))
    product: Mapped[Product] = relationship()
    quantity: Mapped[int]


def item(line: Any) -> Item:
    return Item(name=line.product.name.strip(), price=line.product.price, quantity=line.quantity)


def mapping(**changes: Any) -> OrderMapping[Any]:
    fields: dict[str, Any] = {
        "item": item,
        "email": "customer.email",
        "total": "total",
        "status": "status",
        "created": "created_at",
    }
    fields.update(changes)
    return OrderMapping(Order, **fields)


def created(n: int) -> datetime:
    return FIRST + timedelta(days=3 * n)


def seed(engine: Any) -> None:
    """The shop's tables and its history, written without a session: nothing is captured."""
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            Customer.__table__.insert(),
            [{"id": n, "email": f"customer-{n}@example.com"} for n in range(1, 4)],
        )
        conn.execute(
            Product.__table__.insert(),
            [{"id": 1, "name": "Lamp", "price": Decimal("19.90")}, {"id": 2, "name": None,
                                                                     "price": Decimal("5")}],
        )  # fmt: skip
        conn.execute(
            Order.__table__.insert(),
            [
                {
                    "id": n,
                    "customer_id": None if n == NO_CUSTOMER else 1 + n % 3,
                    "total": Decimal("39.80"),
                    "status": "delivered" if n % 2 else "new",
                    "created_at": created(n),
                }
                for n in range(1, ORDERS + 1)
            ],
        )
        conn.execute(
            OrderLine.__table__.insert(),
            [
                {"order_id": n, "product_id": 2 if n == BROKEN else 1, "quantity": 2}
                for n in range(1, ORDERS + 1)
            ],
        )


def create_shop(database_url: str, **changes: Any) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SHOP_EVENTS_DATABASE_URL"] = database_url
    db.init_app(app)
    ShopEvents(app)
    capture_models(app, order=mapping(**changes), check=False)
    return app


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("SHOP_EVENTS_API_KEY", API_KEY)
    monkeypatch.setenv("SHOP_EVENTS_API_BASE_URL", receiver.base_url)
    monkeypatch.setenv("SHOP_EVENTS_SCHEDULER_ENABLED", "false")


@pytest.fixture
def shops(environment: None, database_url: str) -> Iterator[Any]:
    """Makes the shop (its mapping changed as asked) on a database seeded with its history."""
    made: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = create_shop(database_url, **changes)
        if not made:
            with app.app_context():
                seed(db.engine)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions[CAPTURE_KEY].close()
        tracker_for(app).shutdown()
        tracker_for(app).engine.dispose()
        with app.app_context():
            db.engine.dispose()


def flask(app: Flask, *args: str) -> Result:
    group, info = FlaskGroup(create_app=lambda: app), ScriptInfo(create_app=lambda: app)
    return CliRunner().invoke(group, ["shop-events", *args], obj=info)


def queued(tracker: Tracker) -> list[str]:
    with tracker.engine.connect() as conn:
        keys = conn.execute(select(outbox.c.dedupe_key)).scalars()
        return sorted(keys, key=lambda k: int(k.split(":")[2]))


def in_period(since: datetime, until: datetime) -> list[int]:
    return [n for n in range(1, ORDERS + 1) if since <= created(n) < until]


def test_the_orders_of_a_period_are_queued_in_pages_with_a_progress_bar(
    shops: Any, receiver: Receiver
) -> None:
    app = shops()
    result = flask(app, "migrate")
    assert result.exit_code == 0, result.output
    result = flask(
        app, "backfill", "orders", "--since", "2024-02-01", "--until", "2024-03-01",
        "--page-size", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    wanted = in_period(datetime(2024, 2, 1), datetime(2024, 3, 1))
    assert len(wanted) == 9
    assert queued(tracker_for(app)) == [
        f"backfill:order:{n}:{'DELIVERED' if n % 2 else 'NEW'}" for n in wanted
    ]
    lines = result.output.splitlines()
    assert lines[0] == (
        "backfill of hist_order as orders, placed from 2024-02-01T00:00:00+00:00 to "
        "2024-03-01T00:00:00+00:00: 9 orders to read, from the start"
    )
    assert "reading orders" in result.output
    assert (
        "read 9 orders: queued 9 (9 outbox rows), already queued by an earlier run 0, "
        "captured live 0, skipped as invalid 0"
    ) in lines
    assert "the worker sends them (orders_api): about 1 requests" in result.output
    assert receiver.requests == []


def test_wait_sends_them_and_follows_the_delivery_to_its_end(
    shops: Any, receiver: Receiver
) -> None:
    app = shops()
    flask(app, "migrate")
    result = flask(app, "backfill", "orders", "--as-events", "--until", "2024-01-20", "--wait")
    assert result.exit_code == 0, result.output
    wanted = in_period(FIRST, datetime(2024, 1, 20))
    assert "sending" in result.output
    delivered = sum(1 + n % 2 for n in wanted)  # a delivered order has its own event too
    assert f"sent {delivered}, dead 0, not yet sent 0" in result.output
    first = next(e for e in receiver.past_events if Receiver.params(e)["order_id"] == "1")
    assert first["occurred"] == "2024-01-04T09:00"
    assert Receiver.params(first)["email"] == "customer-2@example.com"
    assert Receiver.items(first) == [{"name": "Lamp", "price": "19.90", "quantity": "2"}]


def test_bad_orders_are_skipped_and_listed_and_the_others_go(shops: Any) -> None:
    app = shops()
    flask(app, "migrate")
    result = flask(app, "backfill", "orders", "--page-size", "7")
    assert result.exit_code == 0, result.output
    assert "read 30 orders: queued 28" in result.output
    assert "skipped as invalid 2" in result.output
    skipped = [line.strip() for line in result.output.splitlines() if "  skipped " in line]
    assert skipped[0].startswith("skipped orders[24].email: ")
    assert skipped[0].endswith("(order '25')")
    assert skipped[1].startswith("skipped orders[26].item: its getter failed: ")
    assert "(order '27')" in skipped[1]
    keys = queued(tracker_for(app))
    assert len(keys) == 28 and not any(f":{n}:" in k for k in keys for n in (25, 27))


def test_an_interrupted_run_continues_after_its_checkpoint_and_queues_nothing_twice(
    shops: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = shops()
    flask(app, "migrate")
    calls = {"n": 0}
    put_value = backfill_run.pause.put_value

    def failing_third(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("the disk is full")
        put_value(*args)

    monkeypatch.setattr(backfill_run.pause, "put_value", failing_third)
    result = flask(app, "backfill", "orders", "--page-size", "5")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)
    monkeypatch.undo()
    tracker = tracker_for(app)
    assert len(queued(tracker)) == 10  # two pages; the third's rows went with its checkpoint

    other = flask(app, "backfill", "orders", "--page-size", "5", "--since", "2024-02-01")
    assert other.exit_code == 1
    assert "stopped after order key [10]: run it again the same way" in other.output

    result = flask(app, "backfill", "orders", "--page-size", "5")
    assert result.exit_code == 0, result.output
    assert "20 orders to read, continuing after order key [10]" in result.output
    assert "read 20 orders: queued 18" in result.output
    assert len(queued(tracker)) == 28

    again = flask(app, "backfill", "orders", "--restart")
    assert "30 orders to read, from the start" in again.output
    assert "queued 0 (0 outbox rows), already queued by an earlier run 28" in again.output


def test_a_created_function_selects_on_the_value_it_reads(shops: Any) -> None:
    app = shops(created=lambda order: order.created_at.replace(tzinfo=UTC))
    flask(app, "migrate")
    result = flask(app, "backfill", "orders", "--since", "2024-02-01", "--until", "2024-03-01")
    assert result.exit_code == 0, result.output
    assert "30 orders to read" in result.output  # every row is read ...
    assert "read 9 orders: queued 9" in result.output  # ... and only the period's queued


def test_a_mapping_without_created_says_what_to_add(shops: Any) -> None:
    app = shops(created=None)
    flask(app, "migrate")
    result = flask(app, "backfill", "orders")
    assert result.exit_code == 1
    assert "order.created: the OrderMapping does not say when an order was placed" in (
        result.output
    )
    assert 'created="created_at"' in result.output


def test_without_flask_the_command_reads_through_a_named_capture(
    database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = create_engine(database_url)
    seed(shop)
    settings = Settings.load(
        {
            "api": {"base_url": receiver.base_url, "key": API_KEY},
            "database": {"url": database_url},
            "scheduler": {"enabled": False},
        }
    )
    tracker = Tracker(settings)
    tracker.migrate()
    capture = CaptureModels(tracker, order=mapping(), engines=[shop])
    module = types.ModuleType("history_shop")
    module.capture = capture  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "history_shop", module)
    try:
        result = CliRunner().invoke(
            cli, ["backfill", "orders", "--capture", "history_shop:capture", "--wait"]
        )
        assert result.exit_code == 0, result.output
        assert "read 30 orders: queued 28" in result.output
        assert len(receiver.orders) == 28
        plain = CliRunner().invoke(cli, ["backfill", "orders"])
        assert plain.exit_code == 2
        assert "--capture MODULE:NAME" in plain.output
    finally:
        capture.close()
        tracker.shutdown()
        tracker.engine.dispose()
        shop.dispose()

"""Capture from a shop shaped like real ones: lines read by properties running a query, no
``user`` relationship, a product with ``title`` (not ``name``), integer statuses with their own
spellings and delivery in a second column, an order written in several commits with its total
set last. Nothing may be lost, and every failure must be seen.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from shop_events import CartMapping, CustomerMapping, Item, OrderMapping, Settings, Tracker
from shop_events.abandonment.flows import unwanted
from shop_events.cli import cli
from shop_events.integrations.models import CaptureModels
from shop_events.storage.tables import capture_errors, carts, kept_captures, outbox
from sqlalchemy import (
    Engine,
    ForeignKey,
    Integer,
    Numeric,
    String,
    create_engine,
    delete,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, object_session

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "real_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


class User(Base):
    __tablename__ = "real_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(200))


class Cart(Base):
    """No relationships: the lines are a property running a query, the user an id."""

    __tablename__ = "real_cart"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("real_user.id"))

    @property
    def lines(self) -> list[CartLine]:
        session = object_session(self)
        assert session is not None
        query = select(CartLine).where(CartLine.cart_id == self.id).order_by(CartLine.id)
        return list(session.scalars(query))


class CartLine(Base):
    __tablename__ = "real_cart_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[int] = mapped_column(ForeignKey("real_cart.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("real_product.id"))
    quantity: Mapped[int]


class Loose(Base):
    """Lines that name their cart without a declared foreign key."""

    __tablename__ = "real_loose_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    basket: Mapped[int]


class OrderStatus(enum.IntEnum):
    NEW = 1
    PAID = 2
    CANCELED = 3


class Order(Base):
    """An integer status, delivery in ``ship_status``, a total only known once shipping is."""

    __tablename__ = "real_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("real_user.id"))
    status: Mapped[int] = mapped_column(Integer, default=OrderStatus.NEW)
    ship_status: Mapped[str | None] = mapped_column(String(20))
    shipping: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))

    @property
    def lines(self) -> list[OrderLine]:
        session = object_session(self)
        assert session is not None
        query = select(OrderLine).where(OrderLine.order_id == self.id).order_by(OrderLine.id)
        return list(session.scalars(query))


class OrderLine(Base):
    __tablename__ = "real_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("real_order.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("real_product.id"))
    quantity: Mapped[int]
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


# -- the mapping, as such a shop writes it -----------------------------------------------------


def product_of(line: CartLine | OrderLine) -> Product:
    session = object_session(line)
    assert session is not None
    found = session.get(Product, line.product_id)
    assert found is not None
    return found


def item(line: CartLine | OrderLine) -> Item:
    product = product_of(line)
    return Item(name=product.title, price=product.price, quantity=line.quantity)


def user_email(row: Cart | Order) -> str | None:
    session = object_session(row)
    assert session is not None
    user = session.get(User, row.user_id) if row.user_id is not None else None
    return None if user is None else user.email


def total(order: Order) -> Decimal:
    # None + Decimal until the shop sets the shipping: the getter raises meanwhile
    return sum((line.price * line.quantity for line in order.lines), Decimal(0)) + order.shipping  # type: ignore[operator]


def status(order: Order) -> Any:
    return "DELIVERED" if order.ship_status == "delivered" else order.status


CART = CartMapping(
    Cart,
    item=item,
    lines=lambda cart: cart.lines,
    line_model=CartLine,
    email=user_email,
    restore_url=lambda cart: f"https://shop.example/cart/{cart.id}",
)
ORDER = OrderMapping(
    Order,
    item=item,
    lines=lambda order: order.lines,
    line_model=OrderLine,
    email=user_email,
    total=total,
    status=status,
    status_map={1: "NEW", 2: "PAID", 3: "CANCELED"},
)
CUSTOMER = CustomerMapping(User)


@pytest.fixture
def shop_engine(database_url: str) -> Iterator[Engine]:
    """The shop's own engine on the plugin's database (captures join its transactions)."""
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [
                Product(id=1, title="Hair styler", price=Decimal("341.00")),
                Product(id=2, title="Bond shampoo", price=Decimal("28.50")),
            ]
        )
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def capture(tracker: Tracker, shop_engine: Engine) -> Iterator[CaptureModels]:
    made = CaptureModels(tracker, cart=CART, order=ORDER, customer=CUSTOMER, engines=shop_engine)
    yield made
    made.close()


def events(tracker: Tracker) -> list[tuple[str, str]]:
    with tracker.engine.connect() as conn:
        rows = conn.execute(select(outbox).order_by(outbox.c.id)).all()
    return [(r.event_type_key, r.key_value) for r in rows]


def params(tracker: Tracker, event_type: str) -> dict[str, Any]:
    with tracker.engine.connect() as conn:
        [body] = conn.execute(
            select(outbox.c.body).where(outbox.c.event_type_key == event_type)
        ).scalars()
    found = {p["name"]: p["value"] for p in json.loads(body)["params"]}
    if "items" in found:
        found["items"] = json.loads(found["items"])["array"]
    return found


def kept(tracker: Tracker) -> list[tuple[str, int, str, str]]:
    with tracker.engine.connect() as conn:
        rows = conn.execute(select(kept_captures)).all()
    return [(r.subject, r.attempts, r.last_field, r.last_error) for r in rows]


def errors(tracker: Tracker) -> dict[tuple[str, str], tuple[int, str]]:
    with tracker.engine.connect() as conn:
        rows = conn.execute(select(capture_errors)).all()
    return {(r.mapping, r.field): (r.failures, r.last_error) for r in rows}


def cart_row(tracker: Tracker, cart_id: int) -> Any:
    with tracker.engine.connect() as conn:
        return conn.execute(select(carts).where(carts.c.cart_id == str(cart_id))).first()


def checkout_in_commits(session: Session, user_id: int) -> int:
    """The order, then each line in its own commit; the shipping (so the total) comes later."""
    order = Order(user_id=user_id)
    session.add(order)
    session.commit()
    for product_id, price in ((1, "341.00"), (2, "28.50")):
        line = OrderLine(order_id=order.id, product_id=product_id, quantity=1, price=Decimal(price))
        session.add(line)
        session.commit()
    return order.id


# -- 1. an order is never dropped because one value was missing for a moment --------------------


def test_an_order_whose_total_comes_last_is_kept_and_placed_when_it_can_be_read(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        user = User(email="ann@ex.com")
        session.add(user)
        session.commit()
        order_id = checkout_in_commits(session, user.id)
        assert events(tracker) == []  # not placed with a total it cannot read…
        assert [(s, n, f) for s, n, f, _ in kept(tracker)] == [
            (f"the order {order_id}", 2, "total")
        ]
        assert "NoneType" in kept(tracker)[0][3]

        order = session.get(Order, order_id)
        assert order is not None
        order.shipping = Decimal("4.90")
        session.commit()
    assert events(tracker) == [("orderCreated", "ann@ex.com")]  # …nor lost
    body = params(tracker, "orderCreated")
    assert body["total"] == "374.40"
    assert [i["name"] for i in body["items"]] == ["Hair styler", "Bond shampoo"]
    assert kept(tracker) == []
    # counted where an operator sees it: once per failed commit, with the field
    assert errors(tracker)[("order", "total")][0] == 2
    health = tracker.health()
    assert health.kept_total == 0
    assert health.capture_errors_total == 2


def test_a_kept_order_is_placed_by_another_process_at_the_commit_that_touches_it(
    tracker: Tracker, shop_engine: Engine
) -> None:
    first = CaptureModels(tracker, order=ORDER, engines=shop_engine)
    with Session(shop_engine) as session:
        user = User(email="bob@ex.com")
        session.add(user)
        session.commit()
        order_id = checkout_in_commits(session, user.id)
    first.close()  # the process that kept it is gone; the kept row is in the database
    assert len(kept(tracker)) == 1
    other = CaptureModels(tracker, order=ORDER, engines=shop_engine)
    try:
        with Session(shop_engine) as session:
            order = session.get(Order, order_id)
            assert order is not None
            order.shipping = Decimal(0)
            session.commit()
    finally:
        other.close()
    assert events(tracker) == [("orderCreated", "bob@ex.com")]
    assert kept(tracker) == []


def test_a_kept_order_is_tried_again_when_a_commit_touches_its_user(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        guest = User(email=None)  # a guest checkout: the email comes with the next step
        session.add(guest)
        session.commit()
        order = Order(user_id=guest.id, shipping=Decimal("4.90"))
        session.add(order)
        session.flush()
        session.add(OrderLine(order_id=order.id, product_id=1, quantity=1, price=Decimal(341)))
        session.commit()
        assert [(f, n) for _, n, f, _ in kept(tracker)] == [("email", 1)]
        guest.email = "guest@ex.com"
        session.commit()  # the order itself is not touched
    assert events(tracker) == [("orderCreated", "guest@ex.com")]
    assert kept(tracker) == []


def test_a_kept_order_with_the_plugins_own_database_is_kept_and_placed_after_the_commits(
    tmp_path: Path,
) -> None:
    tracker = Tracker(
        Settings.load(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'events.db'}"},
                "scheduler": {"enabled": False},
            }
        )
    )
    tracker.migrate()
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    Base.metadata.create_all(engine)
    capture = CaptureModels(tracker, order=ORDER, engines=engine)
    try:
        with Session(engine) as session:
            session.add_all(
                [Product(id=1, title="Styler", price=1), Product(id=2, title="B", price=1)]
            )
            user = User(email="cy@ex.com")
            session.add(user)
            session.commit()
            order_id = checkout_in_commits(session, user.id)
            assert [n for _, n, _, _ in kept(tracker)] == [2]
            order = session.get(Order, order_id)
            assert order is not None
            order.shipping = Decimal(1)
            session.commit()
        assert events(tracker) == [("orderCreated", "cy@ex.com")]
        assert kept(tracker) == []
        assert errors(tracker)[("order", "total")][0] == 2
    finally:
        capture.close()
        tracker.engine.dispose()
        engine.dispose()


# -- 2. a cart whose current state is refused is not reminded with an older one -----------------


def test_a_refused_cart_update_suppresses_the_cart_until_a_valid_state_arrives(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with freeze_time(START) as clock, Session(shop_engine) as session:
        user = User(email="ann@ex.com")
        session.add(user)
        session.commit()
        cart = Cart(user_id=user.id)
        session.add(cart)
        session.flush()
        line = CartLine(cart_id=cart.id, product_id=1, quantity=1)
        session.add(line)
        session.commit()
        assert cart_row(tracker, cart.id).state == "active"

        line.quantity = -1  # the shop accepts it; the plugin refuses it
        session.commit()
        row = cart_row(tracker, cart.id)
        assert (row.state, row.skip_reason) == ("suppressed", "invalid")
        clock.tick(timedelta(hours=2))
        assert tracker.scan().abandoned == 0  # the old state (quantity 1) is not reminded
        assert errors(tracker)[("cart", "items[].quantity")][0] == 1

        line.quantity = 1  # valid again, and the same as the state recorded before
        session.commit()
        row = cart_row(tracker, cart.id)
        assert (row.state, row.skip_reason) == ("active", None)
        clock.tick(timedelta(hours=2))
        assert tracker.scan().abandoned == 1
    assert events(tracker)[-1] == ("abandoned_cart", "ann@ex.com")


def test_a_cart_whose_getter_fails_is_suppressed_and_counted(
    tracker: Tracker, shop_engine: Engine
) -> None:
    def picky(line: CartLine) -> Item:
        if line.product_id == 2:
            raise LookupError("product 2 is not in the catalogue any more")
        return item(line)

    mapping = CartMapping(Cart, item=picky, lines=lambda c: c.lines, line_model=CartLine)
    capture = CaptureModels(tracker, cart=mapping, engines=shop_engine)
    try:
        with Session(shop_engine) as session:
            cart = Cart()
            session.add(cart)
            session.flush()
            session.add(CartLine(cart_id=cart.id, product_id=1, quantity=1))
            session.commit()
            assert cart_row(tracker, cart.id).state == "active"
            session.add(CartLine(cart_id=cart.id, product_id=2, quantity=1))
            session.commit()
            row = cart_row(tracker, cart.id)
            assert (row.state, row.skip_reason) == ("suppressed", "invalid")
    finally:
        capture.close()
    assert errors(tracker) == {
        ("cart", "item"): (1, "LookupError: product 2 is not in the catalogue any more")
    }


def test_a_reminder_queued_before_the_refused_update_is_not_wanted_at_send_time(
    tracker: Tracker,
) -> None:
    item_ = Item(name="Styler", price="341")
    with freeze_time(START) as clock:
        tracker.cart_updated("c-1", email="ann@ex.com", items=[item_])
        clock.tick(timedelta(hours=2))
        assert tracker.scan().abandoned == 1
        with pytest.raises(ValueError, match=r"items\[0\]\.quantity"):
            tracker.cart_updated(
                "c-1", email="ann@ex.com", items=[{**_plain(item_), "quantity": -1}]
            )
    with tracker.engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.subject_id == "c-1")).one()
        why = unwanted(
            conn,
            tracker.settings,
            row.subject_type,
            row.subject_id,
            row.subject_version,
            row.key_value,
        )
    assert why == "the cart's current state could not be captured"


def _plain(item_: Item) -> dict[str, Any]:
    return {"name": item_.name, "price": item_.price}


# -- 3. capture failures are counted, shown, and checked at start -------------------------------


WRONG_CART = CartMapping(
    Cart,
    item=lambda line: Item(name=product_of(line).name, price=1),  # type: ignore[attr-defined]
    lines=lambda cart: cart.lines,
    line_model=CartLine,
)


def test_a_getter_that_fails_is_counted_per_mapping_and_field_and_shown_in_status(
    tracker: Tracker, shop_engine: Engine, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    capture = CaptureModels(tracker, cart=WRONG_CART, engines=shop_engine)
    try:
        with Session(shop_engine) as session:
            for _ in range(2):
                cart = Cart()
                session.add(cart)
                session.flush()
                session.add(CartLine(cart_id=cart.id, product_id=1, quantity=1))
                session.commit()
    finally:
        capture.close()
    assert errors(tracker) == {("cart", "item"): (2, "'Product' object has no attribute 'name'")}
    assert any(
        "cart.item: 'Product' object has no attribute 'name'" in r.getMessage()
        for r in caplog.records
    )
    [error] = tracker.health().capture_errors
    assert (error.mapping, error.field, error.count) == ("cart", "item", 2)

    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{tracker.settings.database.url}"\n[scheduler]\nenabled = false\n'
    )
    runner = CliRunner()
    args = ["--config", str(config), "status"]
    output = runner.invoke(cli, args, catch_exceptions=False).output
    assert "capture errors: 2" in output
    assert "cart.item: 'Product' object has no attribute 'name' (2 times; last the cart" in output
    report = json.loads(runner.invoke(cli, [*args, "--json"], catch_exceptions=False).output)
    assert report["capture_errors_total"] == 2
    [listed] = report["capture_errors"]
    assert (listed["mapping"], listed["field"], listed["count"]) == ("cart", "item", 2)


def test_the_check_at_start_names_the_mapping_field_of_a_getter_that_fails(
    tracker: Tracker, shop_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    capture = CaptureModels(tracker, cart=WRONG_CART, order=ORDER, engines=shop_engine)
    try:
        assert capture.check() == []  # no rows yet: nothing to check against
        with shop_engine.begin() as conn:  # rows the shop had before (not through a session)
            conn.execute(User.__table__.insert(), [{"id": 5, "email": "ann@ex.com"}])
            conn.execute(Cart.__table__.insert(), [{"id": 1, "user_id": 5}])
            conn.execute(
                CartLine.__table__.insert(), [{"cart_id": 1, "product_id": 1, "quantity": 1}]
            )
            conn.execute(Order.__table__.insert(), [{"id": 1, "user_id": 5, "status": 1}])
            conn.execute(
                OrderLine.__table__.insert(),
                [{"order_id": 1, "product_id": 1, "quantity": 1, "price": Decimal(1)}],
            )
        caplog.clear()
        assert capture.check() == [
            "cart.item: 'Product' object has no attribute 'name'",
            "order.total: unsupported operand type(s) for +: 'decimal.Decimal' and 'NoneType'",
        ]
    finally:
        capture.close()
    assert events(tracker) == []  # a dry run
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("cart.item: 'Product' object") for m in logged), logged
    assert errors(tracker)[("cart", "item")][0] == 1
    assert errors(tracker)[("order", "total")][0] == 1


# -- 4. models without relationships ------------------------------------------------------------


def test_lines_read_by_a_function_of_the_row_are_captured_at_every_change(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        user = User(email="ann@ex.com")
        guest_cart = Cart()  # no user: the email getter gives None
        session.add_all([user, guest_cart])
        session.commit()
        cart = Cart(user_id=user.id)
        session.add(cart)
        session.flush()
        session.add_all(
            [
                CartLine(cart_id=cart.id, product_id=1, quantity=1),
                CartLine(cart_id=guest_cart.id, product_id=2, quantity=1),
            ]
        )
        session.commit()
        row = cart_row(tracker, cart.id)
        assert (row.email, [i["name"] for i in json.loads(row.items)]) == (
            "ann@ex.com",
            ["Hair styler"],
        )
        assert cart_row(tracker, guest_cart.id).email is None

        line = CartLine(cart_id=cart.id, product_id=2, quantity=3)
        session.add(line)
        session.commit()
        assert len(json.loads(cart_row(tracker, cart.id).items)) == 2
        line.quantity = 1
        session.commit()
        assert json.loads(cart_row(tracker, cart.id).items)[1]["quantity"] == "1"
        session.execute(delete(CartLine).where(CartLine.cart_id == cart.id))
        session.commit()
        assert cart_row(tracker, cart.id).state == "cleared"


def test_a_lines_attribute_that_is_not_a_relationship_says_what_to_pass(tracker: Tracker) -> None:
    with pytest.raises(ValueError) as caught:
        CaptureModels(tracker, cart=CartMapping(Cart, item=item))
    assert str(caught.value) == (
        "cart.lines: Cart.lines is not a relationship; pass a function of the cart and the "
        "model of its lines instead: lines=lambda cart: cart.lines, line_model=<the line model>"
    )
    with pytest.raises(ValueError, match=r"cart\.line_model: required when lines is a function"):
        CaptureModels(tracker, cart=CartMapping(Cart, item=item, lines=lambda cart: cart.lines))


def test_a_dotted_name_without_the_relationship_is_told_to_use_a_function(
    tracker: Tracker,
) -> None:
    mapping = CartMapping(
        Cart, item=item, lines=lambda c: c.lines, line_model=CartLine, email="user.email"
    )
    with pytest.raises(ValueError) as caught:
        CaptureModels(tracker, cart=mapping)
    message = str(caught.value)
    assert message.startswith(
        "cart.email: Cart has no attribute 'user' (the start of 'user.email'); without that "
        "relationship read the value with a function of the cart: email=lambda cart:"
    )
    assert "lambda _: 'user.email'" not in message


def test_a_plain_name_that_is_no_attribute_gets_the_fixed_value_hint_only_for_a_value(
    tracker: Tracker,
) -> None:
    lines = {"lines": lambda c: c.lines, "line_model": CartLine}
    with pytest.raises(ValueError) as caught:
        CaptureModels(tracker, cart=CartMapping(Cart, item=item, email="email", **lines))  # type: ignore[arg-type]
    assert str(caught.value) == (
        "cart.email: 'email' is not an attribute of Cart; pass a function of the cart "
        "(email=lambda cart: <the email of this cart>)"
    )
    with pytest.raises(ValueError) as caught:
        CaptureModels(tracker, cart=CartMapping(Cart, item=item, currency="EUR", **lines))  # type: ignore[arg-type]
    assert str(caught.value).endswith("or for a fixed value currency=lambda _: 'EUR'")


def test_a_line_model_without_a_foreign_key_needs_the_line_key(tracker: Tracker) -> None:
    lines = {"lines": lambda cart: [], "line_model": Loose}
    with pytest.raises(ValueError, match=r"cart\.line_key: Loose has no foreign key to Cart"):
        CaptureModels(tracker, cart=CartMapping(Cart, item=item, **lines))  # type: ignore[arg-type]
    made = CaptureModels(
        tracker,
        cart=CartMapping(Cart, item=item, line_key="basket", **lines),  # type: ignore[arg-type]
    )
    made.close()


# -- 8. statuses as the shop has them ------------------------------------------------------------


def test_integer_statuses_their_spellings_and_a_second_delivery_column(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        user = User(email="ann@ex.com")
        session.add(user)
        session.commit()
        orders_ = []
        for _ in range(3):
            order = Order(user_id=user.id, shipping=Decimal(0))
            session.add(order)
            session.flush()
            session.add(OrderLine(order_id=order.id, product_id=1, quantity=1, price=1))
            orders_.append(order)
        session.commit()
        paid, canceled, shipped = orders_
        paid.status = OrderStatus.PAID
        canceled.status = OrderStatus.CANCELED
        shipped.ship_status = "delivered"
        session.commit()
    assert sorted(e for e, _ in events(tracker)) == [
        "orderCancelled",
        "orderCreated",
        "orderCreated",
        "orderCreated",
        "orderDelivered",
        "orderUpdated",
    ]
    assert params(tracker, "orderUpdated")["status"] == "PAID"
    assert params(tracker, "orderCancelled")["status"] == "CANCELED"
    assert {params(tracker, "orderDelivered")["status"]} == {"DELIVERED"}


def seed_a_cart(engine: Engine) -> None:
    """A cart the shop had before the plugin (written without a session: nothing captured)."""
    with engine.begin() as conn:
        conn.execute(Cart.__table__.insert(), [{"id": 1}])
        conn.execute(CartLine.__table__.insert(), [{"cart_id": 1, "product_id": 1, "quantity": 1}])


def test_capture_models_checks_the_mappings_at_start_with_flask_sqlalchemy(
    tracker: Tracker, shop_engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from shop_events import ShopEvents, capture_models

    seed_a_cart(shop_engine)
    app = Flask("shop")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db = SQLAlchemy()
    db.init_app(app)
    ShopEvents(app, tracker=tracker)
    capture = capture_models(app, cart=WRONG_CART)
    try:
        assert errors(tracker) == {
            ("cart", "item"): (1, "'Product' object has no attribute 'name'")
        }
        assert any(
            r.getMessage().startswith("cart.item: 'Product' object has no attribute 'name'")
            for r in caplog.records
        )
    finally:
        capture.close()
        with app.app_context():
            db.engine.dispose()
    quiet = capture_models(app, cart=WRONG_CART, check=False)
    quiet.close()
    assert errors(tracker)[("cart", "item")][0] == 1


def test_the_health_page_lists_the_capture_errors_and_the_kept_orders(
    tracker: Tracker, shop_engine: Engine
) -> None:
    from flask import Flask
    from shop_events import ShopEvents

    def broken(line: CartLine) -> Item:
        raise ValueError("<b>no</b> such product")

    capture = CaptureModels(
        tracker,
        cart=CartMapping(Cart, item=broken, lines=lambda c: c.lines, line_model=CartLine),
        order=ORDER,
        engines=shop_engine,
    )
    try:
        with Session(shop_engine) as session:
            user = User(email="ann@ex.com")
            session.add(user)
            session.commit()
            order_id = checkout_in_commits(session, user.id)
            cart = Cart()
            session.add(cart)
            session.flush()
            session.add(CartLine(cart_id=cart.id, product_id=1, quantity=1))
            session.commit()
    finally:
        capture.close()
    app = Flask("shop")
    app.secret_key = "s"
    ShopEvents(app, tracker=tracker, admin_access=lambda: True)
    response = app.test_client().get("/shop-events/admin/health")
    assert response.status_code == 200
    html = response.data.decode()
    errors_table = html.split('id="capture-errors"')[1].split("</table>")[0]
    assert "<td>cart</td><td>item</td>" in errors_table
    assert "&lt;b&gt;no&lt;/b&gt; such product" in errors_table
    # two line commits, then the cart's commit, which tries the kept order again
    assert '<td>order</td><td>total</td><td class="num">3</td>' in errors_table
    kept_table = html.split('id="kept-captures"')[1].split("</table>")[0]
    assert f"<td>the order {order_id}</td>" in kept_table
    assert "order.total" in kept_table


def test_an_enum_status_is_sent_by_its_name_and_a_status_map_is_checked(
    tracker: Tracker,
) -> None:
    from shop_events.integrations.models.mappings import status_reader

    class Row:
        status: Any = OrderStatus.CANCELED

    assert status_reader("order", Row, "status", None)(Row()) == "CANCELED"
    by_map = status_reader("order", Row, "status", {OrderStatus.CANCELED: "CANCELLED"})
    assert by_map(Row()) == "CANCELLED"
    Row.status = 7  # not in the map: as it is
    assert status_reader("order", Row, "status", {1: "NEW"})(Row()) == "7"
    with pytest.raises(ValueError, match=r"order\.status_map\[3\]: must be a status name"):
        CaptureModels(
            tracker,
            order=OrderMapping(Order, item=item, **_lines(), status="status", status_map={3: 3}),
        )  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"order\.status_map: needs status="):
        CaptureModels(tracker, order=OrderMapping(Order, item=item, **_lines(), status_map={}))


def _lines() -> dict[str, Any]:
    return {"lines": lambda order: order.lines, "line_model": OrderLine, "email": user_email}

"""Proof: a small Flask + Flask-SQLAlchemy shop, written here with its own models, installs the
plugin in at most ten lines (the block between the ``shop-events`` markers in
:func:`create_shop`, which README's "Install into your shop" follows step by step), and its
whole flow reaches a real receiver as exactly the expected events.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask, abort, jsonify, request, session
from flask.cli import FlaskGroup, ScriptInfo
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from freezegun import freeze_time
from shop_events import Tracker
from shop_events.integrations.flask.extension import CAPTURE_KEY, capture_models, tracker_for
from shop_events.integrations.models import CaptureModels
from shop_events.storage.tables import carts
from shop_events.testing import Receiver
from sqlalchemy import ForeignKey, Numeric, String, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tests.support import API_KEY, REPO

SHOP = "https://shop.example"
START = "2024-05-06 09:00:00"

db = SQLAlchemy()


# -- the shop's own models -------------------------------------------------------------------


class Product(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))


class Cart(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_cart"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("shop_user.id"))
    user: Mapped[User] = relationship()
    lines: Mapped[list[CartLine]] = relationship(
        order_by="CartLine.id", cascade="all, delete-orphan"
    )


class CartLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_cart_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[int] = mapped_column(ForeignKey("shop_cart.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("shop_product.id"))
    product: Mapped[Product] = relationship()
    quantity: Mapped[int]


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("shop_user.id"))
    user: Mapped[User] = relationship()
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(20), default="new")
    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.id")


class OrderLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("shop_order.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("shop_product.id"))
    product: Mapped[Product] = relationship()
    quantity: Mapped[int]


PRODUCTS = [("Hair styler", "341.00"), ("Bond shampoo", "28.50"), ("Argan oil", "19.90")]


# -- the shop: an app factory, its views, and the plugin installed in it -----------------------


def create_shop(database_url: str) -> Flask:
    app = Flask(__name__)
    app.secret_key = "shop-secret"
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db.init_app(app)

    # shop-events: begin
    # fmt: off
    from shop_events import CartMapping, CustomerMapping, Item, OrderMapping, ShopEvents, capture_models
    app.config["SHOP_EVENTS_DATABASE_URL"] = app.config["SQLALCHEMY_DATABASE_URI"]
    ShopEvents(app)
    def item(line: Any) -> Item:
        return Item(name=line.product.name, price=line.product.price, quantity=line.quantity)
    capture_models(app, customer=CustomerMapping(User, first_name="name", upsert_contact=True),
        cart=CartMapping(Cart, item=item, email="user.email",
                         restore_url=lambda cart: f"https://shop.example/cart/{cart.id}"),
        order=OrderMapping(Order, item=item, email="user.email", total="total", status="status"))
    # fmt: on
    # shop-events: end

    _views(app)
    return app


def _views(app: Flask) -> None:
    def user() -> User:
        found = db.session.get(User, session.get("user_id", 0))
        if found is None:
            abort(401)
        return found

    def cart() -> Cart:
        found = db.session.get(Cart, session.get("cart_id", 0))
        if found is None:
            found = Cart(user=user())
            db.session.add(found)
            db.session.flush()
            session["cart_id"] = found.id
        return found

    def line(line_id: int) -> CartLine:
        found = db.session.get(CartLine, line_id)
        if found is None or found.cart_id != session.get("cart_id"):
            abort(404)
        return found

    def shown(c: Cart) -> ResponseReturnValue:
        rows = [{"id": x.id, "product": x.product_id, "qty": x.quantity} for x in c.lines]
        return jsonify(cart=c.id, lines=rows)

    @app.post("/signup")
    def signup() -> ResponseReturnValue:
        new = User(email=request.form["email"], name=request.form["name"])
        db.session.add(new)
        db.session.commit()
        session["user_id"] = new.id
        return jsonify(user=new.id)

    @app.get("/")
    def products() -> ResponseReturnValue:
        return jsonify([p.name for p in db.session.scalars(select(Product))])

    @app.get("/products/<int:product_id>")
    def product(product_id: int) -> ResponseReturnValue:
        return jsonify(name=db.get_or_404(Product, product_id).name)

    @app.post("/cart/add")
    def add() -> ResponseReturnValue:
        c = cart()
        product_id = int(request.form["product_id"])
        quantity = int(request.form.get("quantity", 1))
        existing = next((x for x in c.lines if x.product_id == product_id), None)
        if existing is None:
            c.lines.append(CartLine(product_id=product_id, quantity=quantity))
        else:
            existing.quantity += quantity
        db.session.commit()
        return shown(c)

    @app.post("/cart/lines/<int:line_id>")
    def change(line_id: int) -> ResponseReturnValue:
        line(line_id).quantity = int(request.form["quantity"])
        db.session.commit()
        return shown(cart())

    @app.post("/cart/lines/<int:line_id>/remove")
    def remove(line_id: int) -> ResponseReturnValue:
        db.session.delete(line(line_id))
        db.session.commit()
        return shown(cart())

    @app.post("/cart/add-gift-wrap")
    def broken() -> ResponseReturnValue:
        c = cart()
        c.lines.append(CartLine(product_id=3, quantity=1))
        c.lines[0].quantity += 5
        db.session.flush()
        raise RuntimeError("gift wrap service is down")  # the request rolls back

    @app.post("/checkout")
    def checkout() -> ResponseReturnValue:
        # Written as many shops do it: the order first, its lines in a second commit.
        c = cart()
        order = Order(user=c.user, total=sum(x.product.price * x.quantity for x in c.lines))
        db.session.add(order)
        db.session.commit()
        for x in c.lines:
            db.session.add(
                OrderLine(order_id=order.id, product_id=x.product_id, quantity=x.quantity)
            )
        db.session.commit()
        session.pop("cart_id")
        return jsonify(order=order.id)

    @app.post("/orders/<int:order_id>/pay")
    def pay(order_id: int) -> ResponseReturnValue:
        order = db.get_or_404(Order, order_id)
        order.status = "paid"
        db.session.commit()
        return jsonify(status=order.status)


# -- running it ------------------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """What a deployment puts in the environment: the API key. The test also points the API at
    the receiver and drives scan and dispatch itself instead of the in-process scheduler.
    """
    monkeypatch.setenv("SHOP_EVENTS_API_KEY", API_KEY)
    monkeypatch.setenv("SHOP_EVENTS_API_BASE_URL", receiver.base_url)
    monkeypatch.setenv("SHOP_EVENTS_SCHEDULER_ENABLED", "false")


@pytest.fixture
def shop(environment: None, database_url: str) -> Iterator[Flask]:
    app = create_shop(database_url)
    with app.app_context():  # the shop's own tables and products
        db.create_all()
        db.session.add_all([Product(name=n, price=Decimal(p)) for n, p in PRODUCTS])
        db.session.commit()
    # README step: `flask shop-events migrate` creates the plugin's tables
    flask, info = FlaskGroup(create_app=lambda: app), ScriptInfo(create_app=lambda: app)
    result = CliRunner().invoke(flask, ["shop-events", "migrate"], obj=info)
    assert result.exit_code == 0, result.output
    yield app
    app.extensions[CAPTURE_KEY].close()
    tracker = tracker_for(app)
    tracker.shutdown()
    tracker.engine.dispose()
    with app.app_context():
        db.engine.dispose()


def post(client: Any, url: str, **form: Any) -> Any:
    response = client.post(url, data=form)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def plugin_cart(tracker: Tracker, cart_id: int) -> Any:
    with tracker.engine.connect() as conn:
        return conn.execute(select(carts).where(carts.c.cart_id == str(cart_id))).first()


def install_block() -> list[str]:
    source = inspect.getsource(create_shop)
    block = source.split("# shop-events: begin")[1].split("# shop-events: end")[0]
    return [x.strip() for x in block.splitlines() if x.strip() and not x.strip().startswith("#")]


def test_the_install_block_is_at_most_ten_lines_and_the_readme_shows_it() -> None:
    assert len(install_block()) <= 10, install_block()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Install into your shop")[1].split("\n## ")[0]
    shown = section.split("```python")[1].split("```")[0]
    untyped = [x.replace("line: Any) -> Item:", "line):") for x in install_block()]
    assert [x.strip() for x in shown.splitlines() if x.strip()] == untyped


def test_the_full_flow_reaches_the_receiver_as_exactly_the_expected_events(
    shop: Flask, receiver: Receiver
) -> None:
    tracker = tracker_for(shop)
    ann, bob = shop.test_client(), shop.test_client()
    with freeze_time(START) as frozen:
        post(ann, "/signup", email="ann@example.com", name="Ann")
        assert ann.get("/").status_code == ann.get("/products/1").status_code == 200
        post(ann, "/cart/add", product_id=1)
        lines = post(ann, "/cart/add", product_id=2, quantity=2)["lines"]
        cart_id = post(ann, f"/cart/lines/{lines[0]['id']}", quantity=3)["cart"]
        post(ann, f"/cart/lines/{lines[1]['id']}/remove")
        before = plugin_cart(tracker, cart_id)
        assert ann.post("/cart/add-gift-wrap").status_code == 500
        assert plugin_cart(tracker, cart_id) == before  # nothing of the rolled-back request
        order_id = post(ann, "/checkout")["order"]
        assert post(ann, f"/orders/{order_id}/pay") == {"status": "paid"}

        post(bob, "/signup", email="bob@example.com", name="Bob")
        bob_cart = post(bob, "/cart/add", product_id=3, quantity=2)["cart"]

        frozen.tick(timedelta(minutes=59))
        assert tracker.scan().abandoned == 0
        frozen.tick(timedelta(minutes=2))
        assert tracker.scan().abandoned == 1  # Bob's; Ann's cart was converted by her order
        tracker.dispatch()

    received = {(e["eventTypeKey"], e["keyValue"]): e for e in receiver.events}
    assert len(receiver.events) == 5
    assert sorted(received) == [
        ("abandoned_cart", "bob@example.com"),
        ("create_contact", "ann@example.com"),
        ("create_contact", "bob@example.com"),
        ("orderCreated", "ann@example.com"),
        ("orderUpdated", "ann@example.com"),
    ]
    assert Receiver.params(received["create_contact", "ann@example.com"]) == {
        "email": "ann@example.com",
        "firstName": "Ann",
    }
    placed = received["orderCreated", "ann@example.com"]
    assert Receiver.items(placed) == [{"name": "Hair styler", "price": "341.00", "quantity": "3"}]
    params = Receiver.params(placed)
    assert (params["order_id"], params["status"], params["total"]) == (
        str(order_id),
        "NEW",
        "1023.00",
    )
    paid = Receiver.params(received["orderUpdated", "ann@example.com"])
    assert (paid["order_id"], paid["status"]) == (str(order_id), "PAID")
    reminder = received["abandoned_cart", "bob@example.com"]
    assert Receiver.items(reminder) == [{"name": "Argan oil", "price": "19.90", "quantity": "2"}]
    assert Receiver.params(reminder)["cart_url"] == f"{SHOP}/cart/{bob_cart}"
    assert plugin_cart(tracker, cart_id).state == "converted"
    assert [r.status for r in receiver.requests] == [200] * 5


def test_a_request_that_rolls_back_leaves_nothing(shop: Flask) -> None:
    tracker = tracker_for(shop)
    client = shop.test_client()
    post(client, "/signup", email="cy@example.com", name="Cy")
    cart_id = post(client, "/cart/add", product_id=1)["cart"]
    with tracker.engine.connect() as conn:
        before = conn.execute(select(carts)).all()
    assert client.post("/cart/add-gift-wrap").status_code == 500
    with tracker.engine.connect() as conn:
        assert conn.execute(select(carts)).all() == before
    with shop.app_context():
        assert [x.quantity for x in db.session.get(Cart, cart_id).lines] == [1]
    assert tracker.stats().get("pending") == 1  # Cy's create_contact only


def test_seed_scripts_are_captured_unless_excluded(shop: Flask) -> None:
    tracker = tracker_for(shop)
    with shop.app_context():  # a seed script or CLI command: no request
        db.session.add(User(email="seeded@example.com", name="Seed"))
        db.session.commit()
    assert tracker.stats().get("pending") == 1

    old: CaptureModels = shop.extensions.pop(CAPTURE_KEY)
    old.close()
    capture_models(
        shop,
        cart=old.cart,
        order=old.order,
        customer=old.customer,
        capture_outside_requests=False,
    )
    with shop.app_context():
        db.session.add(User(email="imported@example.com", name="Imported"))
        db.session.commit()
    assert tracker.stats().get("pending") == 1
    post(shop.test_client(), "/signup", email="real@example.com", name="Real")
    assert tracker.stats().get("pending") == 2


def test_several_apps_in_one_process_each_capture_their_own(
    environment: None, tmp_path: Path
) -> None:
    apps = [create_shop(f"sqlite:///{tmp_path / f'shop{n}.db'}") for n in range(3)]
    try:
        for app in apps:
            tracker_for(app).migrate()
            with app.app_context():
                db.create_all()
        client = apps[1].test_client()
        post(client, "/signup", email="one@example.com", name="One")
        assert [tracker_for(app).stats().get("pending", 0) for app in apps] == [0, 1, 0]
        from flask_sqlalchemy.session import Session
        from shop_events.integrations.models import listeners as orm

        listening = Session(db).dispatch.after_flush
        assert len([fn for fn in listening if fn.__module__ == orm.__name__]) == 1
    finally:
        for app in apps:
            app.extensions[CAPTURE_KEY].close()
            tracker_for(app).engine.dispose()
            with app.app_context():
                db.engine.dispose()

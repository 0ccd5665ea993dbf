"""The shop's own tests: what its pages do to its tables."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from .app import GiftWrapError, create_app
from .models import Cart, CartItem, Order, OrderItem, OrderStatus, Product, User, db


def post(client: FlaskClient, url: str, **form: Any) -> str:
    response = client.post(url, data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    return response.headers["Location"]


def sign_up(client: FlaskClient, email: str = "ann@example.com", name: str = "Ann") -> None:
    post(client, "/signup", email=email, first_name=name)


def lines(app: Flask) -> list[tuple[str, int]]:
    with app.app_context():
        return [(i.product.title, i.qty) for i in CartItem.query.order_by(CartItem.id)]


def test_the_catalogue_and_a_product_page(client: FlaskClient) -> None:
    shown = client.get("/").get_data(as_text=True)
    assert "Hair styler 341.00" in shown and "Argan oil 19.90" in shown
    assert "<h1>Bond shampoo</h1>" in client.get("/products/2").get_data(as_text=True)
    assert client.get("/products/99").status_code == 404


def test_adding_the_same_product_twice_adds_up_and_lines_change_and_go(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "/cart/add", product_id=1)
    post(client, "/cart/add", product_id=2, qty=2)
    assert post(client, "/cart/add", product_id=1) == "/cart"
    assert lines(app) == [("Hair styler", 2), ("Bond shampoo", 2)]
    with app.app_context():
        first, second = (i.id for i in CartItem.query.order_by(CartItem.id))
    post(client, "/cart/update", item_id=first, qty=5)
    post(client, "/cart/remove", item_id=second)
    assert lines(app) == [("Hair styler", 5)]
    assert "Hair styler x 5" in client.get("/cart").get_data(as_text=True)


def test_another_browser_cannot_touch_the_cart(app: Flask, client: FlaskClient) -> None:
    post(client, "/cart/add", product_id=1)
    with app.app_context():
        item_id = CartItem.query.one().id
    assert (
        app.test_client().post("/cart/update", data={"item_id": item_id, "qty": 9}).status_code
        == 404
    )


def test_signing_up_takes_over_the_guest_cart(app: Flask, client: FlaskClient) -> None:
    post(client, "/cart/add", product_id=3)
    sign_up(client)
    with app.app_context():
        user = User.query.filter_by(email="ann@example.com").one()
        assert Cart.query.one().user_id == user.id
        assert user.first_name == "Ann"


def test_the_restore_link_brings_the_cart_to_another_browser(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "/cart/add", product_id=3)
    with app.app_context():
        token = Cart.query.one().token
    other = app.test_client()
    assert other.get(f"/cart/restore/{token}").status_code == 302
    assert "Argan oil x 1" in other.get("/cart").get_data(as_text=True)
    assert other.get("/cart/restore/nope").status_code == 404


def test_a_failed_gift_wrap_leaves_the_cart_as_it_was(app: Flask, client: FlaskClient) -> None:
    post(client, "/cart/add", product_id=1)
    with pytest.raises(GiftWrapError):
        client.post("/cart/gift-wrap")
    assert lines(app) == [("Hair styler", 1)]


def test_checkout_writes_the_order_its_lines_and_total_and_empties_the_cart(
    app: Flask, client: FlaskClient
) -> None:
    sign_up(client)
    post(client, "/cart/add", product_id=1, qty=2)
    post(client, "/cart/add", product_id=3)
    location = post(client, "/checkout")
    order_id = int(re.fullmatch(r"/orders/(\d+)", location).group(1))  # type: ignore[union-attr]
    with app.app_context():
        order = db.session.get(Order, order_id)
        assert order is not None
        assert (order.status, order.ship_status) == (OrderStatus.NEW, "pending")
        assert [(i.product_id, i.qty, i.price) for i in order.lines] == [
            (1, 2, Decimal("341.00")),
            (3, 1, Decimal("19.90")),
        ]
        assert (order.shipping, order.total) == (Decimal("4.90"), Decimal("706.80"))
        assert Cart.query.count() == CartItem.query.count() == 0
    assert "total 706.80" in client.get(location).get_data(as_text=True)


def test_checkout_needs_a_signed_in_shopper_with_a_cart(client: FlaskClient) -> None:
    post(client, "/cart/add", product_id=1)
    assert client.post("/checkout").status_code == 401
    other = client.application.test_client()
    sign_up(other, "bob@example.com", "Bob")
    assert other.post("/checkout").status_code == 400


def test_an_order_is_paid_canceled_shipped_and_delivered(app: Flask, client: FlaskClient) -> None:
    sign_up(client)
    post(client, "/cart/add", product_id=2)
    location = post(client, "/checkout")
    post(client, f"{location}/pay")
    with app.app_context():
        assert Order.query.one().status == OrderStatus.PAID
    post(client, f"{location}/ship", ship_status="shipped")
    post(client, f"{location}/ship", ship_status="delivered")
    assert "PAID, delivered" in client.get(location).get_data(as_text=True)
    post(client, f"{location}/cancel")
    with app.app_context():
        assert Order.query.one().status == OrderStatus.CANCELED
    assert app.test_client().get(location).status_code == 401
    stranger = app.test_client()
    sign_up(stranger, "eve@example.com", "Eve")
    assert stranger.post(f"{location}/cancel").status_code == 404


def test_forms_need_the_csrf_token(tmp_path: Path) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"}, instance_path=str(tmp_path))
    client = app.test_client()
    with app.app_context():
        db.create_all()
    try:
        refused = client.post("/signup", data={"email": "ann@example.com", "first_name": "Ann"})
        assert refused.status_code == 400
        shown = client.get("/").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', shown).group(1)  # type: ignore[union-attr]
        data = {"email": "ann@example.com", "first_name": "Ann", "csrf_token": token}
        assert client.post("/signup", data=data).status_code == 302
    finally:
        with app.app_context():
            db.engine.dispose()


def test_the_default_database_is_second_db_in_the_instance_folder(tmp_path: Path) -> None:
    app = create_app(instance_path=str(tmp_path))
    with app.app_context():
        assert db.engine.url.database == str(tmp_path / "second.db")
        db.engine.dispose()


@pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")  # env.py
def test_the_migrations_build_the_models_tables(tmp_path: Path, restore_logging: None) -> None:
    app = create_app({"TESTING": True}, instance_path=str(tmp_path))
    runner = app.test_cli_runner()
    try:
        upgraded = runner.invoke(args=["db", "upgrade"])
        assert upgraded.exit_code == 0, upgraded.output
        checked = runner.invoke(args=["db", "check"])
        assert checked.exit_code == 0, (checked.output, checked.exception)
        assert runner.invoke(args=["seed"]).output == "3 products\n"
        with app.app_context():
            assert Product.query.order_by(Product.id).first().title == "Hair styler"
            assert OrderItem.query.count() == 0
    finally:
        with app.app_context():
            db.engine.dispose()

"""The shop's app factory and its pages.

Pages are server-rendered forms protected by ``CSRFProtect``; each POST redirects. The
checkout is written as this shop grew it: the order, then each line in its own commit, then the
emptied cart, then the shipping and the total.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from flask.cli import with_appcontext
from flask.typing import ResponseReturnValue
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect

from .models import Cart, CartItem, Order, OrderItem, OrderStatus, Product, User, db

MIGRATIONS = str(Path(__file__).resolve().parent / "migrations")
CATALOGUE = [("Hair styler", "341.00"), ("Bond shampoo", "28.50"), ("Argan oil", "19.90")]

migrate = Migrate()
csrf = CSRFProtect()
shop = Blueprint("shop", __name__)


def create_app(
    test_config: Mapping[str, Any] | None = None, instance_path: str | None = None
) -> Flask:
    """The shop: ``sqlite:///second.db`` in the instance folder unless configured otherwise."""
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    app.config.from_mapping(
        SECRET_KEY="dev",
        SQLALCHEMY_DATABASE_URI="sqlite:///second.db",
        SHIPPING="4.90",
    )
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.from_mapping(test_config)
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS)
    csrf.init_app(app)

    # shop-events: begin
    # fmt: off
    from shop_events import CartMapping, CustomerMapping, Item, OrderMapping, ShopEvents, capture_models
    app.config["SHOP_EVENTS_DATABASE_URL"] = app.config["SQLALCHEMY_DATABASE_URI"]
    ShopEvents(app)
    def item(line: Any) -> Item:
        return Item(name=line.product.title, price=line.product.price, quantity=line.qty)
    def email_of(row: Any) -> str | None:  # no `user` relationship: read it with the shop's own query
        user = db.session.get(User, row.user_id) if row.user_id else None
        return user.email if user else None
    capture_models(app, customer=CustomerMapping(User, first_name="first_name", upsert_contact=True),
        cart=CartMapping(Cart, item=item, lines=lambda cart: cart.lines, line_model=CartItem, email=email_of,
                         restore_url=lambda cart: f"https://shop.example/cart/restore/{cart.token}"),
        order=OrderMapping(Order, item=item, lines=lambda order: order.lines, line_model=OrderItem,
                           email=email_of, total="total", status_map={1: "NEW", 2: "PAID", 3: "CANCELED"},
                           status=lambda o: "DELIVERED" if o.ship_status == "delivered" else o.status))
    # fmt: on
    # shop-events: end

    app.register_blueprint(shop)
    app.cli.add_command(seed)
    return app


@click.command("seed")
@with_appcontext
def seed() -> None:
    """Put the catalogue in an empty shop."""
    if Product.query.first() is None:
        db.session.add_all([Product(title=t, price=Decimal(p)) for t, p in CATALOGUE])
        db.session.commit()
    click.echo(f"{Product.query.count()} products")


# -- helpers -------------------------------------------------------------------------------------

PAGE = """<!doctype html><title>{{ title }}</title><h1>{{ title }}</h1>
{% for form in forms %}<form method="post" action="{{ form.action }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
{% for name, value in form.fields.items() %}<input name="{{ name }}" value="{{ value }}">
{% endfor %}<button>{{ form.label }}</button></form>
{% endfor %}"""


def page(title: str, *forms: dict[str, Any]) -> str:
    return render_template_string(PAGE, title=title, forms=forms)


def form(action: str, label: str, **fields: Any) -> dict[str, Any]:
    return {"action": action, "label": label, "fields": fields}


def signed_in() -> User:
    user = db.session.get(User, session.get("user_id", 0))
    if user is None:
        abort(401)
    return user


def current_cart(create: bool = False) -> Cart | None:
    cart = Cart.query.filter_by(token=session.get("cart", "")).first()
    if cart is None and create:
        cart = Cart(token=secrets.token_hex(16), user_id=session.get("user_id"))
        db.session.add(cart)
        db.session.flush()
        session["cart"] = cart.token
    return cart


def cart_item(item_id: int) -> CartItem:
    cart = current_cart()
    item = db.session.get(CartItem, item_id)
    if cart is None or item is None or item.cart_id != cart.id:
        abort(404)
    return item


# -- pages ---------------------------------------------------------------------------------------


@shop.get("/")
def index() -> str:
    products = Product.query.order_by(Product.id).all()
    return page(
        "Shop",
        form(url_for("shop.signup"), "Sign up", email="", first_name=""),
        *(form(url_for("shop.add"), f"{p.title} {p.price}", product_id=p.id) for p in products),
    )


@shop.get("/products/<int:product_id>")
def product(product_id: int) -> str:
    found = db.get_or_404(Product, product_id)
    return page(found.title, form(url_for("shop.add"), "Add to cart", product_id=found.id, qty=1))


@shop.post("/signup")
def signup() -> ResponseReturnValue:
    user = User(email=request.form["email"].strip().lower(), first_name=request.form["first_name"])
    db.session.add(user)
    db.session.commit()
    session["user_id"] = user.id
    cart = current_cart()
    if cart is not None and cart.user_id is None:  # the guest's cart becomes theirs
        cart.user_id = user.id
        db.session.commit()
    return redirect(url_for("shop.index"))


@shop.get("/cart")
def cart_page() -> str:
    cart = current_cart()
    lines = cart.lines if cart is not None else []
    forms = []
    for line in lines:
        title = f"{line.product.title} x {line.qty}"
        forms.append(form(url_for("shop.update"), title, item_id=line.id, qty=line.qty))
        forms.append(form(url_for("shop.remove"), f"Remove {line.product.title}", item_id=line.id))
    return page("Cart", *forms, form(url_for("shop.checkout"), "Check out"))


@shop.get("/cart/restore/<token>")
def restore(token: str) -> ResponseReturnValue:
    cart = Cart.query.filter_by(token=token).first_or_404()
    session["cart"] = cart.token
    return redirect(url_for("shop.cart_page"))


@shop.post("/cart/add")
def add() -> ResponseReturnValue:
    cart = current_cart(create=True)
    assert cart is not None
    product_id = int(request.form["product_id"])
    qty = int(request.form.get("qty", 1))
    line = CartItem.query.filter_by(cart_id=cart.id, product_id=product_id).first()
    if line is None:
        db.session.add(CartItem(cart_id=cart.id, product_id=product_id, qty=qty))
    else:
        line.qty += qty
    db.session.commit()
    return redirect(url_for("shop.cart_page"))


@shop.post("/cart/update")
def update() -> ResponseReturnValue:
    line = cart_item(int(request.form["item_id"]))
    line.qty = int(request.form["qty"])  # not checked: the shop takes what the form sends
    db.session.commit()
    return redirect(url_for("shop.cart_page"))


@shop.post("/cart/remove")
def remove() -> ResponseReturnValue:
    db.session.delete(cart_item(int(request.form["item_id"])))
    db.session.commit()
    return redirect(url_for("shop.cart_page"))


class GiftWrapError(RuntimeError):
    """The gift-wrapping partner did not answer."""


@shop.post("/cart/gift-wrap")
def gift_wrap() -> ResponseReturnValue:
    cart = current_cart(create=True)
    assert cart is not None
    for line in cart.lines:
        line.qty += 1  # one wrapped, one for the shopper
    db.session.flush()
    raise GiftWrapError("the gift-wrapping service is down")


@shop.post("/checkout")
def checkout() -> ResponseReturnValue:
    user = signed_in()
    cart = current_cart()
    if cart is None or not cart.lines:
        abort(400)
    order = Order(user_id=user.id, status=OrderStatus.NEW)
    db.session.add(order)
    db.session.commit()
    for line in cart.lines:
        db.session.add(
            OrderItem(
                order_id=order.id,
                product_id=line.product_id,
                qty=line.qty,
                price=line.product.price,
            )
        )
        db.session.commit()
    CartItem.query.filter_by(cart_id=cart.id).delete()
    db.session.delete(cart)
    db.session.commit()
    session.pop("cart", None)
    order.shipping = Decimal(current_app.config["SHIPPING"])
    order.total = order.subtotal + order.shipping
    db.session.commit()
    return redirect(url_for("shop.order_page", order_id=order.id))


def own_order(order_id: int) -> Order:
    order = db.get_or_404(Order, order_id)
    if order.user_id != signed_in().id:
        abort(404)
    return order


@shop.get("/orders/<int:order_id>")
def order_page(order_id: int) -> str:
    order = own_order(order_id)
    status = OrderStatus(order.status).name
    return page(
        f"Order {order.id}: {status}, {order.ship_status}, total {order.total}",
        form(url_for("shop.pay", order_id=order.id), "Pay"),
        form(url_for("shop.cancel", order_id=order.id), "Cancel"),
        form(url_for("shop.ship", order_id=order.id), "Shipment", ship_status=order.ship_status),
    )


@shop.post("/orders/<int:order_id>/pay")
def pay(order_id: int) -> ResponseReturnValue:
    order = own_order(order_id)
    order.status = OrderStatus.PAID
    db.session.commit()
    return redirect(url_for("shop.order_page", order_id=order.id))


@shop.post("/orders/<int:order_id>/cancel")
def cancel(order_id: int) -> ResponseReturnValue:
    order = own_order(order_id)
    order.status = OrderStatus.CANCELED
    db.session.commit()
    return redirect(url_for("shop.order_page", order_id=order.id))


@shop.post("/orders/<int:order_id>/ship")
def ship(order_id: int) -> ResponseReturnValue:
    """The carrier's updates (``shipped``, then ``delivered``), entered by the shop's staff."""
    order = db.get_or_404(Order, order_id)
    order.ship_status = request.form["ship_status"]
    db.session.commit()
    return redirect(url_for("shop.order_page", order_id=order.id))

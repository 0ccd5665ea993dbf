"""The shop's models, in the ``db.Column`` style of most Flask shops."""

from __future__ import annotations

import enum
from decimal import Decimal

from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


class OrderStatus(enum.IntEnum):
    """Stored as an integer; delivery is tracked apart, in ``Order.ship_status``."""

    NEW = 1
    PAID = 2
    CANCELED = 3


class Product(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "products"
    id = db.Column(db.Integer, primary_key=True)
    title = db.Column(db.String(120), nullable=False)
    price = db.Column(db.Numeric(10, 2), nullable=False)


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), unique=True, nullable=False)
    first_name = db.Column(db.String(80), nullable=False)


class Cart(db.Model):  # type: ignore[name-defined,misc]
    """A browser's cart, known by the token in its cookie; ``user_id`` once signed in."""

    __tablename__ = "carts"
    id = db.Column(db.Integer, primary_key=True)
    token = db.Column(db.String(32), unique=True, nullable=False)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"))

    @property
    def lines(self) -> list[CartItem]:
        return CartItem.query.filter_by(cart_id=self.id).order_by(CartItem.id).all()  # type: ignore[no-any-return]


class CartItem(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "cart_items"
    id = db.Column(db.Integer, primary_key=True)
    cart_id = db.Column(db.Integer, db.ForeignKey("carts.id"), nullable=False)
    product_id = db.Column(db.Integer, db.ForeignKey("products.id"), nullable=False)
    qty = db.Column(db.Integer, nullable=False, default=1)
    product = db.relationship(Product)


class Order(db.Model):  # type: ignore[name-defined,misc]
    """``total`` stays empty until the checkout has priced the shipping."""

    __tablename__ = "orders"
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"), nullable=False)
    status = db.Column(db.Integer, nullable=False, default=OrderStatus.NEW)
    ship_status = db.Column(db.String(20), nullable=False, default="pending")
    shipping = db.Column(db.Numeric(10, 2))
    total = db.Column(db.Numeric(10, 2))

    @property
    def lines(self) -> list[OrderItem]:
        return OrderItem.query.filter_by(order_id=self.id).order_by(OrderItem.id).all()  # type: ignore[no-any-return]

    @property
    def subtotal(self) -> Decimal:
        return sum((line.price * line.qty for line in self.lines), Decimal(0))


class OrderItem(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "order_items"
    id = db.Column(db.Integer, primary_key=True)
    order_id = db.Column(db.Integer, db.ForeignKey("orders.id"), nullable=False)
    product_id = db.Column(db.Integer, db.ForeignKey("products.id"), nullable=False)
    qty = db.Column(db.Integer, nullable=False)
    price = db.Column(db.Numeric(10, 2), nullable=False)
    product = db.relationship(Product)

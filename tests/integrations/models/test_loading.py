"""How a capture reads a cart at commit: as the database has it now, with what the getters
follow (a path of two relationships, each line's product) in the one statement, the lines in
the relationship's order, and a collection that is a query left to its function."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from shop_events import CartMapping, Item, Tracker
from shop_events.integrations.models import CaptureModels
from shop_events.storage.tables import carts
from sqlalchemy import Engine, ForeignKey, Numeric, String, create_engine, event, select, update
from sqlalchemy.orm import (
    DeclarativeBase,
    DynamicMapped,
    Mapped,
    Session,
    mapped_column,
    relationship,
)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "load_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))


class User(Base):
    __tablename__ = "load_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("load_account.id"))
    account: Mapped[Account] = relationship()


class Product(Base):
    __tablename__ = "load_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


class Cart(Base):
    __tablename__ = "load_cart"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("load_user.id"))
    user: Mapped[User | None] = relationship()
    lines: Mapped[list[CartLine]] = relationship(
        back_populates="cart", cascade="all, delete-orphan", order_by="CartLine.position.desc()"
    )


class CartLine(Base):
    __tablename__ = "load_cart_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[int] = mapped_column(ForeignKey("load_cart.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("load_product.id"))
    position: Mapped[int]
    quantity: Mapped[int] = mapped_column(default=1)
    cart: Mapped[Cart] = relationship(back_populates="lines")
    product: Mapped[Product] = relationship()


class Basket(Base):
    """Lines as a query (``lazy="dynamic"``): read by iterating it, never loaded with the row."""

    __tablename__ = "load_basket"
    id: Mapped[int] = mapped_column(primary_key=True)
    lines: DynamicMapped[BasketLine] = relationship(order_by="BasketLine.id")


class BasketLine(Base):
    __tablename__ = "load_basket_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    basket_id: Mapped[int] = mapped_column(ForeignKey("load_basket.id"))
    title: Mapped[str] = mapped_column(String(100))


def item(line: CartLine) -> Item:
    return Item(name=line.product.title, price=line.product.price, quantity=line.quantity)


def fail(what: str, exc: Exception) -> None:
    raise AssertionError(f"{what}: {exc}") from exc


@pytest.fixture
def shop_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [
                User(id=1, account=Account(id=1, email="deep@ex.com")),
                *(Product(id=n, title=f"Product {n}", price=Decimal(f"{n}.50")) for n in (1, 2, 3)),
            ]
        )
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def capture(tracker: Tracker, shop_engine: Engine) -> Iterator[CaptureModels]:
    made = CaptureModels(
        tracker,
        cart=CartMapping(Cart, item=item, email="user.account.email", currency=lambda _: "EUR"),
        engines=shop_engine,
        on_error=fail,
    )
    yield made
    made.close()


def recorded(tracker: Tracker, cart_id: int) -> tuple[str | None, list[tuple[str, str, int]]]:
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts).where(carts.c.cart_id == str(cart_id))).one()
    items = [(i["name"], i["price"], int(i.get("quantity", 1))) for i in json.loads(row.items)]
    return row.email, items


def test_the_cart_is_read_in_one_statement_with_its_user_path_lines_and_products(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split()[0].upper())

    with Session(shop_engine) as session:
        cart = Cart(user_id=1, lines=[CartLine(product_id=1, position=1)])
        session.add(cart)
        session.flush()
        session.add(CartLine(cart_id=cart.id, product_id=2, position=2, quantity=3))
        session.flush()  # the shop's own statements; the collection does not know the line
        event.listen(shop_engine, "before_cursor_execute", note)
        try:
            session.commit()
        finally:
            event.remove(shop_engine, "before_cursor_execute", note)
        cart_id = cart.id
    assert sent.count("SELECT") == 1  # no lazy load of the user, its account or a product
    assert recorded(tracker, cart_id) == (
        "deep@ex.com",
        [("Product 2", "2.50", 3), ("Product 1", "1.50", 1)],  # the relationship's order
    )


def test_rows_the_session_holds_are_read_again_as_the_database_has_them(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine, expire_on_commit=False) as session:
        cart = Cart(user_id=1, lines=[CartLine(product_id=1, position=1)])
        session.add(cart)
        session.commit()
        assert cart.lines[0].product.title == "Product 1"  # held, and not told of what follows
        session.execute(
            update(Product).where(Product.id == 1).values(title="Renamed"),
            execution_options={"synchronize_session": False},
        )
        session.execute(
            update(CartLine).where(CartLine.cart_id == cart.id).values(quantity=4),
            execution_options={"synchronize_session": False},
        )
        cart.lines.append(CartLine(product_id=3, position=0))
        session.commit()
        assert recorded(tracker, cart.id)[1] == [("Renamed", "1.50", 4), ("Product 3", "3.50", 1)]


def test_a_cart_without_its_user_has_no_email(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        cart = Cart(user_id=None, lines=[CartLine(product_id=2, position=1)])
        session.add(cart)
        session.commit()
        assert recorded(tracker, cart.id) == (None, [("Product 2", "2.50", 1)])


def test_lines_that_are_a_query_are_read_by_iterating_it(
    tracker: Tracker, shop_engine: Engine
) -> None:
    capture = CaptureModels(
        tracker,
        cart=CartMapping(
            Basket,
            item=lambda line: Item(name=line.title, price=Decimal("1.00")),
            currency=lambda _: "EUR",
        ),
        engines=shop_engine,
        on_error=fail,
    )
    try:
        with Session(shop_engine) as session:
            basket = Basket()
            session.add(basket)
            session.flush()
            session.add_all([BasketLine(basket_id=basket.id, title=t) for t in ("A", "B")])
            session.commit()
            assert [name for name, _, _ in recorded(tracker, basket.id)[1]] == ["A", "B"]
    finally:
        capture.close()

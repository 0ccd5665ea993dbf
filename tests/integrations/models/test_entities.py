"""The capture's read makes plain models' entities from a select of their columns, and leaves
the session as the ORM's ``populate_existing`` load leaves it; models and sessions where that is
not the whole of the ORM's work are read by the ORM."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from shop_events import CartMapping, Item, Tracker
from shop_events.integrations.models import CaptureModels
from shop_events.integrations.models.entities import Plan, plain
from shop_events.integrations.models.loading import Loader
from shop_events.integrations.models.mappings import parent_of
from shop_events.storage.tables import carts
from sqlalchemy import (
    Engine,
    ForeignKey,
    Numeric,
    String,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    ORMExecuteState,
    Session,
    column_property,
    deferred,
    mapped_column,
    reconstructor,
    relationship,
    with_loader_criteria,
)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "ent_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    carts: Mapped[list[Cart]] = relationship(back_populates="customer")


class Product(Base):
    __tablename__ = "ent_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


class Cart(Base):
    __tablename__ = "ent_cart"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("ent_customer.id"))
    note: Mapped[str | None] = mapped_column(String(50))
    customer: Mapped[Customer | None] = relationship(back_populates="carts")
    lines: Mapped[list[CartLine]] = relationship(
        back_populates="cart", cascade="all, delete-orphan", order_by="CartLine.position"
    )


class CartLine(Base):
    __tablename__ = "ent_cart_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[int] = mapped_column(ForeignKey("ent_cart.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("ent_product.id"))
    position: Mapped[int]
    quantity: Mapped[int] = mapped_column(default=1)
    removed: Mapped[bool] = mapped_column(default=False)
    cart: Mapped[Cart] = relationship(back_populates="lines")
    product: Mapped[Product] = relationship()


class Gift(Base):
    """A product with a ``reconstructor``: the ORM's load sets ``label``."""

    __tablename__ = "ent_gift"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))

    @reconstructor
    def _loaded(self) -> None:
        self.label = self.title.upper()


class GiftBox(Base):
    __tablename__ = "ent_gift_box"
    id: Mapped[int] = mapped_column(primary_key=True)
    lines: Mapped[list[GiftLine]] = relationship(order_by="GiftLine.id")


class GiftLine(Base):
    __tablename__ = "ent_gift_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    box_id: Mapped[int] = mapped_column(ForeignKey("ent_gift_box.id"))
    gift_id: Mapped[int] = mapped_column(ForeignKey("ent_gift.id"))
    gift: Mapped[Gift] = relationship()


class Animal(Base):
    """Single-table inheritance: a row is made as the class its discriminator names."""

    __tablename__ = "ent_animal"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "animal",
    }


class Cat(Animal):
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "cat"}


class Note(Base):
    __tablename__ = "ent_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50))
    long_body: Mapped[str] = deferred(mapped_column(String(500), default=""))


class Shout(Base):
    __tablename__ = "ent_shout"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50))


Shout.loud = column_property(Shout.body + "!")  # type: ignore[attr-defined]


class Eager(Base):
    __tablename__ = "ent_eager"
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("ent_product.id"))
    product: Mapped[Product] = relationship(lazy="joined")


@pytest.fixture
def shop_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [
                Customer(id=1, email="ann@ex.com"),
                *(Product(id=n, title=f"Product {n}", price=Decimal(f"{n}.50")) for n in (1, 2, 3)),
                Cart(
                    id=1,
                    customer_id=1,
                    lines=[
                        CartLine(id=1, product_id=1, position=2, quantity=2),
                        CartLine(id=2, product_id=2, position=1),
                    ],
                ),
                Gift(id=1, title="socks"),
                GiftBox(id=1),
            ]
        )
        session.commit()
    yield engine
    engine.dispose()


def reader() -> Loader:
    return Loader(Cart, parent_of("cart", Cart, "lines"), ["customer.email"])


def snapshot(session: Session, cart: Cart) -> list[Any]:
    """What the session holds after the read, by identity: each row's attributes loaded and
    their column values, expired ones, whether changed; then the cart as the getters see it."""
    states = sorted(
        (inspect(obj) for obj in session.identity_map.values()), key=lambda s: repr(s.key)
    )
    held = [
        (
            repr(state.key),
            sorted(k for k in state.dict if not k.startswith("_")),
            {p.key: state.dict.get(p.key) for p in state.mapper.column_attrs},
            sorted(state.expired_attributes),
            state.modified,
            state.persistent,
        )
        for state in states
    ]
    assert cart.customer is not None
    seen = [cart.customer.email, [(ln.id, ln.quantity, ln.product.title) for ln in cart.lines]]
    return [held, seen, sorted(session.dirty, key=repr), sorted(session.new, key=repr)]


def fresh(session: Session) -> list[Any]:
    return []


def held_and_added(session: Session) -> list[Any]:
    cart = session.get(Cart, 1)
    assert cart is not None
    held = list(cart.lines)
    assert held[0].product.title == "Product 2"
    cart.note = "changed"
    cart.lines.append(CartLine(id=3, product_id=3, position=3))
    return held


def stale(session: Session) -> list[Any]:
    cart = session.get(Cart, 1)
    assert cart is not None
    held = list(cart.lines)
    assert [line.product.title for line in held] == ["Product 2", "Product 1"]
    session.execute(
        update(CartLine).where(CartLine.cart_id == 1).values(quantity=7),
        execution_options={"synchronize_session": False},
    )
    session.execute(text("UPDATE ent_product SET title = 'Renamed' WHERE id = 2"))
    session.execute(text("UPDATE ent_cart_line SET position = 0 WHERE id = 1"))
    return held


def expired(session: Session) -> list[Any]:
    cart = session.get(Cart, 1)
    assert cart is not None and cart.customer is not None
    held = [*cart.lines, cart.customer]
    session.expire_all()
    return held


@pytest.mark.parametrize("prepare", [fresh, held_and_added, stale, expired])
def test_the_session_is_left_as_the_orms_populate_existing_load_leaves_it(
    shop_engine: Engine, prepare: Callable[[Session], list[Any]]
) -> None:
    load = reader()
    found: dict[str, list[Any]] = {}
    executed: list[str] = []
    for via in ("columns", "orm"):
        with Session(shop_engine) as session:
            if via == "orm":  # a listener that could change a read: the ORM reads
                event.listen(session, "do_orm_execute", lambda s: executed.append("orm"))
            held = prepare(session)
            session.flush()
            executed.clear()
            cart = load(session, (1,))
            assert executed == ([] if via == "columns" else ["orm"])
            assert all(obj is session.identity_map.get(inspect(obj).key) for obj in held)
            found[via] = snapshot(session, cart)
            found[via].append([ln in cart.lines for ln in held if isinstance(ln, CartLine)])
            session.flush()  # the rows made or refreshed are persistent and clean
            assert not session.dirty and not session.new
            assert cart.lines[0].cart is cart and cart.customer is not None
            assert [c.id for c in cart.customer.carts] == [1]
            session.rollback()
    assert found["columns"] == found["orm"]
    if prepare is stale:
        assert found["columns"][1][1] == [(1, 7, "Product 1"), (2, 7, "Renamed")]


def test_a_row_made_by_the_read_is_deleted_and_changed_like_one_the_orm_loaded(
    shop_engine: Engine,
) -> None:
    with Session(shop_engine) as session:
        cart = reader()(session, (1,))
        assert cart is not None
        first, second = cart.lines
        session.delete(first)
        second.quantity = 5
        cart.customer.email = "new@ex.com"
        session.commit()
    with Session(shop_engine) as session:
        rows = session.execute(select(CartLine.id, CartLine.quantity)).all()
        assert [tuple(row) for row in rows] == [(1, 5)]
        assert session.get(Customer, 1).email == "new@ex.com"  # type: ignore[union-attr]


def test_which_models_are_read_from_their_columns() -> None:
    assert all(plain(inspect(m)) for m in (Customer, Product, Cart, CartLine, Gift))
    # inheritance, a deferred column, a column expression, a relationship loaded with the row
    assert not any(plain(inspect(m)) for m in (Animal, Cat, Note, Shout, Eager))


def test_a_session_whose_listeners_would_see_the_difference_is_read_by_the_orm(
    shop_engine: Engine,
) -> None:
    registered = tuple(Session().dispatch.do_orm_execute)  # a capture's, by other tests
    plan = Plan([inspect(Product)], [()], own=registered)
    with Session(shop_engine) as session:
        assert plan.usable(session)
        event.listen(session, "loaded_as_persistent", lambda s, i: None)
        assert not plan.usable(session)
    assert not Plan([inspect(Gift)], [()], registered).usable(Session(shop_engine))  # reconstructor

    def refreshed(target: Any, context: Any, attrs: Any) -> None:
        pass

    event.listen(Product, "refresh", refreshed)
    try:
        assert not plan.usable(Session(shop_engine))
    finally:
        event.remove(Product, "refresh", refreshed)
    assert plan.usable(Session(shop_engine))


def recorded(tracker: Tracker, cart_id: int) -> list[tuple[str, int]]:
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts).where(carts.c.cart_id == str(cart_id))).one()
    return [(i["name"], int(i.get("quantity", 1))) for i in json.loads(row.items)]


def item(line: CartLine) -> Item:
    return Item(name=line.product.title, price=line.product.price, quantity=line.quantity)


def fail(what: str, exc: Exception) -> None:
    raise AssertionError(f"{what}: {exc}") from exc


@contextmanager
def capturing(tracker: Tracker, engine: Engine, model: type[Any], item: Any) -> Iterator[None]:
    capture = CaptureModels(
        tracker,
        cart=CartMapping(model, item=item, currency=lambda _: "EUR"),
        engines=engine,
        on_error=fail,
    )
    try:
        yield
    finally:
        capture.close()


def test_a_value_the_shop_set_is_captured_as_the_database_returns_it(
    tracker: Tracker, shop_engine: Engine
) -> None:
    def priced(line: CartLine) -> Item:
        return Item(name=line.product.title, price=line.product.price)

    with capturing(tracker, shop_engine, Cart, priced), Session(shop_engine) as session:
        product = Product(id=4, title="Scarf", price=Decimal("4.5"))  # Numeric(10, 2): 4.50
        session.add(CartLine(id=3, cart_id=1, product=product, position=3))
        session.commit()
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts.c["items"]).where(carts.c.cart_id == "1")).one()
    assert [i["price"] for i in json.loads(row.items)] == ["2.50", "1.50", "4.50"]


def test_a_soft_delete_criteria_added_by_the_shop_applies_to_the_capture(
    tracker: Tracker, shop_engine: Engine
) -> None:
    def only_kept(state: ORMExecuteState) -> None:
        if state.is_select:
            state.statement = state.statement.options(
                with_loader_criteria(CartLine, CartLine.removed.is_(False))
            )

    with capturing(tracker, shop_engine, Cart, item), Session(shop_engine) as session:
        event.listen(session, "do_orm_execute", only_kept)
        cart = session.get(Cart, 1)
        assert cart is not None
        cart.lines[0].removed = True  # position 1: Product 2
        session.commit()
    assert recorded(tracker, 1) == [("Product 1", 2)]


def test_a_model_with_a_reconstructor_is_read_by_the_orm(
    tracker: Tracker, shop_engine: Engine
) -> None:
    def labelled(line: GiftLine) -> Item:
        return Item(name=line.gift.label, price=Decimal("1.00"))

    with capturing(tracker, shop_engine, GiftBox, labelled), Session(shop_engine) as session:
        session.add(GiftLine(box_id=1, gift_id=1))
        session.commit()
    assert recorded(tracker, 1) == [("SOCKS", 1)]

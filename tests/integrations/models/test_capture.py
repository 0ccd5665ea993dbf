"""Automatic capture from the shop's own models (``shop_events.integrations.models``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from shop_events import CartMapping, CustomerMapping, Item, OrderMapping, Settings, Tracker
from shop_events.integrations.models import CaptureModels
from shop_events.integrations.models.listeners import same_database
from shop_events.storage.tables import carts, orders, outbox, registrations
from sqlalchemy import (
    Engine,
    ForeignKey,
    Numeric,
    String,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "orm_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    first_name: Mapped[str | None] = mapped_column(String(50))


class Cart(Base):
    __tablename__ = "orm_cart"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(200))
    lines: Mapped[list[CartLine]] = relationship(
        back_populates="cart", cascade="all, delete-orphan", order_by="CartLine.id"
    )


class CartLine(Base):
    __tablename__ = "orm_cart_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[int] = mapped_column(ForeignKey("orm_cart.id"))
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    quantity: Mapped[int] = mapped_column(default=1)
    cart: Mapped[Cart] = relationship(back_populates="lines")


class Order(Base):
    __tablename__ = "orm_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="new")
    cart_id: Mapped[int | None]
    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.id")


class OrderLine(Base):
    __tablename__ = "orm_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orm_order.id"))
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    quantity: Mapped[int] = mapped_column(default=1)


def item(line: CartLine | OrderLine) -> Item:
    return Item(name=line.name, price=line.price, quantity=line.quantity)


CART = CartMapping(
    Cart,
    item=item,
    email="email",
    currency=lambda cart: "EUR",
    restore_url=lambda cart: f"https://shop.example/cart/{cart.id}",
)
ORDER = OrderMapping(Order, item=item, cart_id="cart_id", status="status")
CUSTOMER = CustomerMapping(User, first_name="first_name", upsert_contact=True)


def fail(what: str, exc: Exception) -> None:
    raise AssertionError(f"{what}: {exc}") from exc


@pytest.fixture
def shop_engine(database_url: str) -> Iterator[Engine]:
    """The shop's own engine on the plugin's database."""
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def capture(tracker: Tracker, shop_engine: Engine) -> Iterator[CaptureModels]:
    made = CaptureModels(
        tracker, cart=CART, order=ORDER, customer=CUSTOMER, engines=shop_engine, on_error=fail
    )
    yield made
    made.close()


def cart_row(tracker: Tracker, cart_id: object) -> Any:
    with tracker.engine.connect() as conn:
        return conn.execute(select(carts).where(carts.c.cart_id == str(cart_id))).first()


def names(row: Any) -> list[tuple[str, str]]:
    return [(i["name"], i.get("quantity", "1")) for i in json.loads(row.items)]


def events(tracker: Tracker) -> list[tuple[str, str]]:
    with tracker.engine.connect() as conn:
        rows = conn.execute(select(outbox).order_by(outbox.c.id)).all()
    return [(r.event_type_key, r.key_value) for r in rows]


def order_body(tracker: Tracker) -> dict[str, Any]:
    with tracker.engine.connect() as conn:
        [body] = conn.execute(
            select(outbox.c.body).where(outbox.c.event_type_key == "orderCreated")
        ).scalars()
    params = {p["name"]: p["value"] for p in json.loads(body)["params"]}
    params["items"] = json.loads(params["items"])["array"]
    return params


def new_cart(session: Session, *lines: tuple[str, str, int], email: str | None = None) -> Cart:
    made = [CartLine(name=n, price=Decimal(p), quantity=q) for n, p, q in lines]
    cart = Cart(email=email, lines=made)
    session.add(cart)
    session.commit()
    return cart


# -- carts -----------------------------------------------------------------------------------


def test_lines_inserted_updated_deleted_send_the_whole_cart(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        cart = new_cart(session, ("Styler", "341.00", 1), ("Shampoo", "28.50", 2), email="a@ex.com")
        row = cart_row(tracker, cart.id)
        assert names(row) == [("Styler", "1"), ("Shampoo", "2")]
        assert (row.email, row.currency, row.state, row.version) == ("a@ex.com", "EUR", "active", 1)
        assert row.restore_url == f"https://shop.example/cart/{cart.id}"

        cart.lines[1].quantity = 3
        session.commit()
        row = cart_row(tracker, cart.id)
        assert (names(row), row.version) == ([("Styler", "1"), ("Shampoo", "3")], 2)

        session.delete(cart.lines[0])
        session.commit()
        assert names(cart_row(tracker, cart.id)) == [("Shampoo", "3")]

        cart.lines.clear()  # delete-orphan
        session.commit()
        assert cart_row(tracker, cart.id).state == "cleared"
    assert events(tracker) == []  # carts become events only when abandoned


def test_a_line_added_by_its_foreign_key_is_in_the_cart(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine, expire_on_commit=False) as session:
        cart = new_cart(session, ("Styler", "341.00", 1))
        assert len(cart.lines) == 1  # loaded, and not told about the next line
        session.add(CartLine(cart_id=cart.id, name="Brush", price=Decimal("12.75")))
        session.commit()
        assert names(cart_row(tracker, cart.id)) == [("Styler", "1"), ("Brush", "1")]


def test_a_cart_change_costs_the_shops_commit_one_read_and_one_write(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split()[0].upper())

    with Session(shop_engine) as session:
        cart = new_cart(session, ("Styler", "341.00", 1), ("Shampoo", "28.50", 2))
        cart.lines.append(CartLine(name="Brush", price=Decimal("12.75")))
        session.flush()  # the shop's own statements
        cart_id = cart.id
        event.listen(shop_engine, "before_cursor_execute", note)
        try:
            session.commit()
        finally:
            event.remove(shop_engine, "before_cursor_execute", note)
    # the cart and its lines read back in one statement, the cart recorded in one (and, on
    # MySQL, one savepoint that keeps a failed capture out of the shop's transaction; on
    # PostgreSQL it goes with the INSERT, in one pipeline)
    savepoint = ["SAVEPOINT"] if shop_engine.dialect.name == "mysql" else []
    assert sent == ["SELECT", *savepoint, "INSERT"]
    assert len(names(cart_row(tracker, cart_id))) == 3


def test_the_cart_row_changing_sends_the_cart(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        cart = new_cart(session, ("Styler", "341.00", 1))
        assert cart_row(tracker, cart.id).email is None
        cart.email = "late@ex.com"
        session.commit()
        assert cart_row(tracker, cart.id).email == "late@ex.com"
        empty = Cart(email="e@ex.com")
        session.add(empty)
        session.commit()
        assert cart_row(tracker, empty.id) is None  # a new empty cart is nothing to record
        session.delete(cart)  # the lines go by cascade
        session.commit()
        assert cart_row(tracker, cart.id).state == "cleared"


def test_bulk_statements_through_the_session(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        cart = new_cart(session, ("Styler", "341.00", 1), ("Shampoo", "28.50", 1), ("Oil", "9", 1))
        cart_id = cart.id
        session.execute(update(CartLine).where(CartLine.name == "Oil").values(quantity=5))
        session.commit()
        assert names(cart_row(tracker, cart_id))[2] == ("Oil", "5")

        session.execute(delete(CartLine).where(CartLine.name == "Styler"))
        session.commit()
        assert names(cart_row(tracker, cart_id)) == [("Shampoo", "1"), ("Oil", "5")]

        session.execute(
            insert(CartLine), [{"cart_id": cart_id, "name": "Mask", "price": Decimal("23.40")}]
        )
        session.commit()
        assert [n for n, _ in names(cart_row(tracker, cart_id))] == ["Shampoo", "Oil", "Mask"]

        session.execute(delete(CartLine).where(CartLine.cart_id == cart_id))
        session.commit()
        assert cart_row(tracker, cart_id).state == "cleared"

        other = new_cart(session, ("Brush", "12.75", 1))
        session.execute(delete(CartLine.__table__))  # a Core table statement, every cart
        session.execute(delete(Cart).where(Cart.id == other.id))
        session.commit()
        assert cart_row(tracker, other.id).state == "cleared"


# -- nothing for a rollback ------------------------------------------------------------------


def test_rolled_back_or_abandoned_transactions_emit_nothing(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        session.add(Cart(lines=[CartLine(name="Styler", price=Decimal(1))]))
        session.add(User(email="u@ex.com"))
        session.add(Order(email="o@ex.com", lines=[OrderLine(name="Styler", price=Decimal(1))]))
        session.flush()
        session.execute(delete(CartLine))
        session.rollback()
        session.commit()  # an empty transaction after it
    with Session(shop_engine) as session:
        session.add(Cart(lines=[CartLine(name="Styler", price=Decimal(1))]))
        session.flush()
    # closed without a commit: rolled back
    with Session(shop_engine) as session:
        session.add(Cart(lines=[CartLine(name="Styler", price=Decimal(1))]))
        session.commit()
    with tracker.engine.connect() as conn:
        assert len(conn.execute(select(carts)).all()) == 1
        assert conn.execute(select(registrations)).all() == []
    assert events(tracker) == []


def test_a_savepoint_rolled_back_keeps_the_rest_of_the_transaction(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        cart = new_cart(session, ("Styler", "341.00", 1))
        cart.lines[0].quantity = 2
        with session.begin_nested() as savepoint:
            session.add(Order(email="o@ex.com", lines=[OrderLine(name="Styler", price=1)]))
            session.add(CartLine(cart_id=cart.id, name="Brush", price=Decimal(1)))
            session.add(User(email="gone@ex.com"))
            session.flush()
            savepoint.rollback()
        with session.begin_nested():
            session.add(User(email="kept@ex.com"))
        session.commit()
        assert names(cart_row(tracker, cart.id)) == [("Styler", "2")]
    assert events(tracker) == [("create_contact", "kept@ex.com")]


def test_a_failing_commit_loses_the_shops_rows_and_the_plugins(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    seen: list[int] = []

    def refuse(session: Session) -> None:  # runs after the plugin's listener
        seen.append(len(session.connection().execute(select(outbox)).all()))
        raise RuntimeError("the shop's own check failed")

    event.listen(Session, "before_commit", refuse)
    try:
        with Session(shop_engine) as session:
            session.add(Order(email="o@ex.com", lines=[OrderLine(name="Styler", price=1)]))
            with pytest.raises(RuntimeError, match="own check"):
                session.commit()
            session.rollback()
    finally:
        event.remove(Session, "before_commit", refuse)
    assert seen == [1]  # written inside the shop's transaction…
    assert events(tracker) == []  # …and gone with it
    with Session(shop_engine) as session:
        assert session.execute(select(Order)).all() == []


# -- orders ----------------------------------------------------------------------------------


def test_an_order_written_in_two_commits_is_sent_once_with_its_lines(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        cart = new_cart(session, ("Styler", "341.00", 1), email="o@ex.com")
        cart_id = cart.id
        order = Order(email="o@ex.com", cart_id=cart_id)
        session.add(order)
        session.commit()
        assert events(tracker) == []  # no lines yet: not sent without them
        order_id = order.id
    with Session(shop_engine) as session:  # another request adds the lines
        session.add_all(
            [
                OrderLine(order_id=order_id, name="Styler", price=Decimal("341.00")),
                OrderLine(order_id=order_id, name="Brush", price=Decimal("12.75"), quantity=2),
            ]
        )
        session.commit()
        assert events(tracker) == [("orderCreated", "o@ex.com")]
        body = order_body(tracker)
        assert [(i["name"], i["quantity"]) for i in body["items"]] == [
            ("Styler", "1"),
            ("Brush", "2"),
        ]
        assert (body["order_id"], body["total"], body["status"]) == (str(order_id), "366.50", "NEW")
        assert cart_row(tracker, cart_id).state == "converted"

        session.add(OrderLine(order_id=order_id, name="Late", price=Decimal(1)))
        session.commit()
        assert events(tracker) == [("orderCreated", "o@ex.com")]  # placed once

        placed = session.get(Order, order_id)
        assert placed is not None
        placed.status = "delivered"
        session.commit()
        placed.cart_id = None  # not a status change
        session.commit()
    assert events(tracker) == [("orderCreated", "o@ex.com"), ("orderDelivered", "o@ex.com")]


def test_an_order_with_its_lines_in_one_commit(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    with Session(shop_engine) as session:
        session.add(Order(email="o@ex.com", status="paid", lines=[OrderLine(name="Oil", price=9)]))
        session.commit()
    assert events(tracker) == [("orderCreated", "o@ex.com")]
    body = order_body(tracker)
    assert (body["status"], body["total"]) == ("PAID", "9.00")
    with tracker.engine.connect() as conn:
        assert conn.execute(select(orders.c.status)).scalar_one() == "PAID"


def test_an_order_from_before_the_plugin_is_not_placed_by_a_status_change(
    tracker: Tracker, shop_engine: Engine
) -> None:
    with Session(shop_engine) as session:
        old = Order(email="o@ex.com", lines=[OrderLine(name="Oil", price=9)])
        session.add(old)
        session.commit()
        capture = CaptureModels(tracker, order=ORDER, engines=shop_engine, on_error=fail)
        try:
            old.status = "delivered"
            session.commit()
        finally:
            capture.close()
    assert events(tracker) == []


# -- customers -------------------------------------------------------------------------------


def test_a_new_user_completes_registration_and_creates_the_contact(
    tracker: Tracker, shop_engine: Engine, capture: CaptureModels
) -> None:
    tracker.registration_started("ann@ex.com")
    with Session(shop_engine) as session:
        session.add(User(email="ann@ex.com", first_name="Ann"))
        session.commit()
    with tracker.engine.connect() as conn:
        assert conn.execute(select(registrations.c.state)).scalar_one() == "completed"
        [body] = conn.execute(select(outbox.c.body)).scalars()
    assert json.loads(body) == {
        "eventTypeKey": "create_contact",
        "keyValue": "ann@ex.com",
        "params": [
            {"name": "email", "value": "ann@ex.com"},
            {"name": "firstName", "value": "Ann"},
        ],
    }


# -- bad data does not break the shop --------------------------------------------------------


def test_bad_data_is_reported_and_the_shops_commit_goes_on(
    tracker: Tracker, shop_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    capture = CaptureModels(tracker, cart=CART, customer=CUSTOMER, engines=shop_engine)
    try:
        with Session(shop_engine) as session:
            new_cart(session, ("Styler", "-1", 1), email="a@ex.com")
            session.add(User(email="not an email"))
            session.commit()
            assert len(session.execute(select(User)).all()) == 1
    finally:
        capture.close()
    assert events(tracker) == []
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("shop_events.integrations.models")
    ]
    assert any("items[0].price: must not be negative" in m for m in messages), messages
    assert any("email" in m and "not a valid email" in m for m in messages), messages


def refuse_carts_holding(engine: Engine, name: str) -> None:
    """A trigger on the plugin's carts table that fails any insert of a cart holding ``name``:
    a capture the database itself refuses, inside the shop's transaction."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_cart() RETURNS trigger AS $$ BEGIN "
                f"IF position('{name}' in NEW.items) > 0 THEN RAISE EXCEPTION 'refused'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_cart BEFORE INSERT ON shop_events_carts "
                "FOR EACH ROW EXECUTE FUNCTION refuse_cart()"
            )
        elif dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_cart BEFORE INSERT ON shop_events_carts "
                f"WHEN instr(NEW.items, '{name}') > 0 BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_cart BEFORE INSERT ON shop_events_carts FOR EACH ROW "
                f"BEGIN IF instr(NEW.items, '{name}') > 0 THEN "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; END IF; END"
            )


def test_a_capture_the_database_refuses_leaves_the_shops_commit_and_the_other_captures(
    tracker: Tracker, shop_engine: Engine
) -> None:
    refuse_carts_holding(tracker.engine, "Refused")
    failed: list[str] = []
    capture = CaptureModels(
        tracker, cart=CART, engines=shop_engine, on_error=lambda what, exc: failed.append(what)
    )
    try:
        with Session(shop_engine) as session:
            refused = Cart(email="a@ex.com", lines=[CartLine(name="Refused", price=Decimal(1))])
            kept = Cart(email="b@ex.com", lines=[CartLine(name="Styler", price=Decimal(2))])
            session.add_all([refused, kept])
            session.commit()  # PostgreSQL: the refused write must not abort the shop's commit
            ids = (refused.id, kept.id)
    finally:
        capture.close()
    with Session(shop_engine) as session:
        assert len(session.execute(select(CartLine)).all()) == 2  # the shop's rows are all there
    assert failed == [f"the cart {ids[0]}"]
    assert cart_row(tracker, ids[0]) is None
    assert names(cart_row(tracker, ids[1])) == [("Styler", "1")]


def test_a_cart_whose_new_state_the_database_refuses_is_suppressed_and_counted(
    tracker: Tracker, shop_engine: Engine
) -> None:
    """The refused write goes with the shop's commit on PostgreSQL and fails there: the shop's
    commit goes on, and the cart recorded before is not reminded with its older state."""
    refuse_carts_holding(tracker.engine, "Refused")
    capture = CaptureModels(tracker, cart=CART, engines=shop_engine)
    try:
        with Session(shop_engine) as session:
            cart = new_cart(session, ("Styler", "2.00", 1), email="a@ex.com")
            assert cart_row(tracker, cart.id).state == "active"
            cart.lines.append(CartLine(name="Refused", price=Decimal(1)))
            session.commit()
            cart_id = cart.id
    finally:
        capture.close()
    with Session(shop_engine) as session:  # the shop's line is there
        assert len(session.execute(select(CartLine)).all()) == 2
    row = cart_row(tracker, cart_id)
    assert (row.state, row.skip_reason) == ("suppressed", "invalid")
    assert names(row) == [("Styler", "1")]
    [error] = tracker.health().capture_errors
    assert (error.mapping, error.count) == ("cart", 1)
    assert (error.last_subject, "refused" in error.last_error) == (f"the cart {cart_id}", True)


# -- one set of listeners, any number of apps ------------------------------------------------


def own_tracker(path: Path) -> Tracker:
    """A tracker on its own SQLite file (nothing is sent in these tests)."""
    tracker = Tracker(
        Settings.load({"database": {"url": f"sqlite:///{path}"}, "scheduler": {"enabled": False}})
    )
    tracker.migrate()
    return tracker


def listeners(name: str) -> list[Any]:
    from shop_events.integrations.models import listeners as orm

    found = getattr(Session().dispatch, name)
    return [fn for fn in found if getattr(fn, "__module__", "") == orm.__name__]


def test_listeners_are_registered_once_and_each_app_captures_its_own(tmp_path: Path) -> None:
    trackers, engines, captures = [], [], []
    try:
        for n in range(3):
            tracker = own_tracker(tmp_path / f"events{n}.db")
            engine = create_engine(f"sqlite:///{tmp_path / f'shop{n}.db'}")
            Base.metadata.create_all(engine)
            trackers.append(tracker)
            engines.append(engine)
            captures.append(CaptureModels(tracker, cart=CART, engines=engine, on_error=fail))
        for name in ("after_flush", "before_commit", "after_commit", "do_orm_execute"):
            assert len(listeners(name)) == 1, name
        with pytest.raises(ValueError, match="Cart, CartLine already captured"):
            CaptureModels(trackers[0], cart=CART, engines=engines[0])
        with pytest.raises(ValueError, match="Cart, CartLine already captured"):
            CaptureModels(trackers[0], cart=CART)  # all sessions: overlaps every app

        with Session(engines[1]) as session:
            cart_id = new_cart(session, ("Styler", "341.00", 1)).id
        # not the same database as the plugin's: written after the commit, with its engine
        assert [cart_row(t, cart_id) is not None for t in trackers] == [False, True, False]
        captures[1].close()
        with Session(engines[1]) as session:
            new_cart(session, ("Brush", "1", 1))
        assert [cart_row(t, 2) is not None for t in trackers] == [False, False, False]
    finally:
        for made in captures:
            made.close()
        for tracker in trackers:
            tracker.engine.dispose()
        for engine in engines:
            engine.dispose()
    assert len(listeners("after_flush")) == 1


def test_work_outside_requests_is_captured_or_excluded(
    tracker: Tracker, shop_engine: Engine
) -> None:
    in_request = False
    capture = CaptureModels(
        tracker,
        cart=CART,
        engines=shop_engine,
        capture_outside_requests=False,
        in_request=lambda: in_request,
        on_error=fail,
    )
    try:
        with Session(shop_engine) as session:
            seeded = new_cart(session, ("Seeded", "1", 1)).id
            in_request = True
            shopped = new_cart(session, ("Bought", "1", 1)).id
        assert cart_row(tracker, seeded) is None
        assert cart_row(tracker, shopped) is not None
    finally:
        capture.close()
    with pytest.raises(ValueError, match="needs in_request"):
        CaptureModels(tracker, cart=CART, capture_outside_requests=False)
    everywhere = CaptureModels(tracker, cart=CART, engines=shop_engine, on_error=fail)
    try:
        with Session(shop_engine) as session:
            seeded = new_cart(session, ("Seeded", "1", 1)).id
        assert cart_row(tracker, seeded) is not None
    finally:
        everywhere.close()


# -- declarations are checked when made ------------------------------------------------------


def test_mistakes_in_the_mappings_are_named(tracker: Tracker) -> None:
    with pytest.raises(ValueError, match=r"cart\.currency: 'EUR' is not an attribute of Cart"):
        CaptureModels(tracker, cart=CartMapping(Cart, item=item, currency="EUR"))
    with pytest.raises(ValueError, match=r"cart\.lines: Cart has no relationship 'items'"):
        CaptureModels(tracker, cart=CartMapping(Cart, item=item, lines="items"))
    with pytest.raises(ValueError, match=r"order\.lines: CartLine\.cart must be a one-to-many"):
        CaptureModels(tracker, order=OrderMapping(CartLine, item=item, lines="cart"))
    with pytest.raises(ValueError, match=r"customer\.model: .* is not a mapped"):
        CaptureModels(tracker, customer=CustomerMapping(dict))
    with pytest.raises(ValueError, match="needs cart="):
        CaptureModels(tracker)


def test_same_database() -> None:
    def engine(url: str) -> Engine:
        return create_engine(url)

    memory = engine("sqlite://")
    assert same_database(memory, memory)
    assert not same_database(memory, engine("sqlite://"))
    assert same_database(engine("sqlite:///shop.db"), engine("sqlite:///./shop.db"))
    assert not same_database(engine("sqlite:///shop.db"), engine("sqlite:///other.db"))
    pg = "postgresql+psycopg://{}@/shop?host=/run/pg"
    assert same_database(engine(pg.format("app")), engine(pg.format("events")))
    assert not same_database(engine(pg.format("app")), engine(pg.replace("shop", "x")))
    assert not same_database(engine("sqlite:///shop.db"), engine(pg.format("app")))


def test_separate_databases_write_after_the_commit(tmp_path: Path) -> None:
    tracker = own_tracker(tmp_path / "events.db")
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    Base.metadata.create_all(engine)
    capture = CaptureModels(tracker, order=ORDER, engines=engine, on_error=fail)
    try:
        with Session(engine) as session:
            session.add(Order(email="o@ex.com", lines=[OrderLine(name="Oil", price=9)]))
            session.flush()
            assert events(tracker) == []
            session.commit()
        assert events(tracker) == [("orderCreated", "o@ex.com")]
    finally:
        capture.close()
        tracker.engine.dispose()
        engine.dispose()

"""Host commit cost: a shop's ORM commit that adds a cart line, with the plugin's capture and
without the plugin, on SQLite and PostgreSQL side by side.

The shop is plain SQLAlchemy with the models most shops have (``User``, ``Product``, ``Cart``
with a ``user`` and a ``lines`` relationship, ``CartLine`` with a ``product``, ``Order`` and
``OrderLine``) and the README's mappings for all three (cart, order, customer; ``item`` reads
``line.product``). One timed call is what an add-to-cart request does with its session::

    with Session(engine) as session:
        cart = session.get(Cart, cart_id)
        product = session.get(Product, product_id)
        cart.lines.append(CartLine(product=product, quantity=1))
        session.commit()

Each engine gets two databases with the same rows: the shop without the plugin, and the shop
with the plugin's tables in its own database, so the capture joins the shop's transaction. Both
SQLite files are in WAL mode (the mode the plugin leaves a shared file in), the shop's
connections with SQLite's default ``synchronous=FULL`` (a commit waits for the disk).
PostgreSQL runs on a throwaway cluster of the test suite's kind, twice: ``fsync=on`` as a
production server runs (the goal is judged there), and ``fsync=off`` as the test suite runs it
(shown for comparison). The line tables have an index on their cart, as a shop with many carts
needs.

Without the plugin, its session listeners are removed, so the baseline runs none of its code.
The two cases alternate in blocks (one block adds a line to each of ``--carts`` carts; the
lines added are deleted, untimed, after each block), so drift on the machine hits both alike.
Each cart starts a block with ``--lines`` lines. The goal: capture ≤ 1.5× the plain commit for
the median and ≤ 2× for the p99, on SQLite and PostgreSQL.

``--profile`` adds, per engine, the statements one captured commit sends next to the plain one,
and a cProfile of the captured commits (top functions by cumulative time in the plugin).

Run: ``python tests/benchmarks/bench_orm_commit.py`` (``--help`` for the knobs;
``--engines sqlite`` for SQLite only). The first line printed names the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.postgres: the throwaway cluster of the test suite

import sqlalchemy  # noqa: E402
from bench_capture import median_p99_us, timed  # noqa: E402
from shop_events import (  # noqa: E402
    CartMapping,
    CustomerMapping,
    Item,
    OrderMapping,
    Settings,
    Tracker,
)
from shop_events.integrations.models import CaptureModels  # noqa: E402
from shop_events.integrations.models import listeners as orm_listeners  # noqa: E402
from sqlalchemy import (  # noqa: E402
    Engine,
    ForeignKey,
    Numeric,
    String,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
)

GOAL_MEDIAN = 1.5
GOAL_P99 = 2.0
POSTGRES = "postgresql"
POSTGRES_NO_FSYNC = "postgresql, fsync off"
VARIANTS = ("sqlite", POSTGRES, POSTGRES_NO_FSYNC)
"""SQLite, PostgreSQL as a production server runs it, and as the test suite runs it."""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    first_name: Mapped[str | None] = mapped_column(String(50))


class Product(Base):
    __tablename__ = "bench_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    url: Mapped[str] = mapped_column(String(200))


class Cart(Base):
    __tablename__ = "bench_cart"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("bench_user.id"))
    user: Mapped[User | None] = relationship()
    lines: Mapped[list[CartLine]] = relationship(
        back_populates="cart", cascade="all, delete-orphan", order_by="CartLine.id"
    )


class CartLine(Base):
    __tablename__ = "bench_cart_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[int] = mapped_column(ForeignKey("bench_cart.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("bench_product.id"))
    quantity: Mapped[int] = mapped_column(default=1)
    cart: Mapped[Cart] = relationship(back_populates="lines")
    product: Mapped[Product] = relationship()


class Order(Base):
    __tablename__ = "bench_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("bench_user.id"))
    user: Mapped[User] = relationship()
    total: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(20), default="new")
    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.id")


class OrderLine(Base):
    __tablename__ = "bench_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("bench_order.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("bench_product.id"))
    quantity: Mapped[int] = mapped_column(default=1)
    product: Mapped[Product] = relationship()


def item(line: CartLine | OrderLine) -> Item:
    """The README's ``item``, with the product's page."""
    product = line.product
    return Item(name=product.name, price=product.price, quantity=line.quantity, url=product.url)


def capture_for(tracker: Tracker, engine: Engine) -> CaptureModels:
    """The README's three mappings, for sessions on ``engine``."""
    return CaptureModels(
        tracker,
        cart=CartMapping(
            Cart,
            item=item,
            email="user.email",
            currency=lambda cart: "EUR",
            restore_url=lambda cart: f"https://shop.example/cart/{cart.id}",
        ),
        order=OrderMapping(Order, item=item, email="user.email", total="total", status="status"),
        customer=CustomerMapping(User, first_name="first_name", upsert_contact=True),
        engines=engine,
    )


# -- the plugin present or absent --------------------------------------------------------------

_HOOKS: list[tuple[str, Callable[..., Any]]] = [
    ("before_flush", orm_listeners._before_flush),
    ("after_flush", orm_listeners._after_flush),
    ("do_orm_execute", orm_listeners._do_orm_execute),
    ("before_commit", orm_listeners._before_commit),
    ("after_commit", orm_listeners._after_commit),
    ("after_soft_rollback", orm_listeners._after_soft_rollback),
    ("after_transaction_end", orm_listeners._after_transaction_end),
]
"""The listeners a capture registers on the ``Session`` class (once per process)."""


def plugin_listening(on: bool) -> None:
    """Register or remove the plugin's session listeners (the captures stay registered)."""
    for name, hook in _HOOKS:
        present = event.contains(Session, name, hook)
        if on and not present:
            event.listen(Session, name, hook)
        elif not on and present:
            event.remove(Session, name, hook)


# -- the databases -----------------------------------------------------------------------------


@dataclass
class Shop:
    """One shop database: its engine, and the plugin's tracker when installed."""

    label: str
    engine: Engine
    first_extra_line: int
    tracker: Tracker | None = None
    capture: CaptureModels | None = None


def seed(engine: Engine, carts: int, lines: int, products: int) -> int:
    """The shop's rows; returns the first id the timed commits' lines get."""
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Product),
            [
                {
                    "id": p + 1,
                    "name": f"Product {p} with a realistic, moderately long name",
                    "price": Decimal(f"{12 + p % 40}.50"),
                    "url": f"https://shop.example/p/{p + 1}",
                }
                for p in range(products)
            ],
        )
        conn.execute(
            insert(User),
            [
                {"id": u + 1, "email": f"shopper{u}@example.com", "first_name": f"Ann {u}"}
                for u in range(carts)
            ],
        )
        conn.execute(insert(Cart), [{"id": c + 1, "user_id": c + 1} for c in range(carts)])
        rows = [
            {"cart_id": c + 1, "product_id": (c * 7 + k) % products + 1, "quantity": 1 + k % 3}
            for c in range(carts)
            for k in range(lines)
        ]
        if rows:
            conn.execute(insert(CartLine), rows)
        last = conn.execute(select(func.max(CartLine.id))).scalar()
    return (last or 0) + 1


def reset(shop: Shop) -> None:
    """Delete the lines the timed commits added (Core: no session, nothing captured)."""
    with shop.engine.begin() as conn:
        conn.execute(delete(CartLine).where(CartLine.id >= shop.first_extra_line))


def add_line(engine: Engine, cart_id: int, product_id: int) -> Callable[[], None]:
    """One add-to-cart request's work with its session."""

    def call() -> None:
        with Session(engine) as session:
            cart = session.get(Cart, cart_id)
            product = session.get(Product, product_id)
            assert cart is not None and product is not None
            cart.lines.append(CartLine(product=product, quantity=1))
            session.commit()

    return call


def block_calls(shop: Shop, carts: int, products: int, round_: int) -> list[Callable[[], None]]:
    """One block: a line added to each cart, the product varying with ``round_``."""
    return [
        add_line(shop.engine, c + 1, (c * 13 + round_ * 5 + 3) % products + 1) for c in range(carts)
    ]


def run_block(shop: Shop, calls: Sequence[Callable[[], None]]) -> list[int]:
    """Time each call, with the plugin listening only for the shop that has it."""
    plugin_listening(shop.capture is not None)
    try:
        return [timed(call) for call in calls]
    finally:
        reset(shop)


@dataclass
class Figures:
    """Median and p99 µs of one engine, without and with the plugin."""

    kind: str
    plain: tuple[float, float]
    captured: tuple[float, float]

    @property
    def ratio(self) -> tuple[float, float]:
        """With / without, for the median and the p99."""
        return self.captured[0] / self.plain[0], self.captured[1] / self.plain[1]


def measure(
    kind: str, plain: Shop, shop: Shop, args: argparse.Namespace
) -> tuple[Figures, list[int], list[int]]:
    """Warm-up blocks, then timed blocks alternating the two cases."""
    plain_ns: list[int] = []
    captured_ns: list[int] = []
    for round_ in range(args.warmup_blocks + args.blocks):
        pair = [(plain, plain_ns), (shop, captured_ns)]
        if round_ % 2:
            pair.reverse()
        for case, into in pair:
            samples = run_block(case, block_calls(case, args.carts, args.products, round_))
            if round_ >= args.warmup_blocks:
                into.extend(samples)
    figures = Figures(kind, median_p99_us(plain_ns), median_p99_us(captured_ns))
    return figures, plain_ns, captured_ns


def measure_ways(shop: Shop, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """The captured commit as shipped (psycopg 3: the savepoint in one pipeline with the
    capture's first statement, the cart upsert in one pipeline with the COMMIT), with the upsert
    sent at once (with the savepoint, before the COMMIT), and with the savepoint as a statement
    of its own too, in alternating blocks: median and p99 µs of each."""
    from shop_events.storage import savepoint

    pipelined, deferring = savepoint._PIPELINED, savepoint._DEFERRING
    ways = {
        "with the commit": (pipelined, True),
        "write at once": (pipelined, False),
        "savepoint apart": ("(none)", False),
    }
    samples: dict[str, list[int]] = {how: [] for how in ways}
    try:
        for round_ in range(args.warmup_blocks + args.blocks):
            order = list(ways) if round_ % 2 else list(reversed(ways))
            for how in order:
                savepoint._PIPELINED, savepoint._DEFERRING = ways[how]
                found = run_block(shop, block_calls(shop, args.carts, args.products, round_))
                if round_ >= args.warmup_blocks:
                    samples[how].extend(found)
    finally:
        savepoint._PIPELINED, savepoint._DEFERRING = pipelined, deferring
    return {how: median_p99_us(found) for how, found in samples.items()}


# -- where the time goes -----------------------------------------------------------------------


def statements(shop: Shop, args: argparse.Namespace) -> list[str]:
    """The statements one commit sends (after a warm-up), in order."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split())[:110])

    engines = {shop.engine}
    if shop.tracker is not None:
        engines.add(shop.tracker.engine)
    calls = block_calls(shop, 2, args.products, 99)
    plugin_listening(shop.capture is not None)
    calls[0]()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", note)
    try:
        calls[1]()
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", note)
        reset(shop)
    return sent


def profile(shop: Shop, args: argparse.Namespace) -> pstats.Stats:
    """cProfile of one block of captured commits."""
    calls = block_calls(shop, args.carts, args.products, 7)
    plugin_listening(True)
    profiler = cProfile.Profile()
    profiler.enable()
    for call in calls:
        call()
    profiler.disable()
    reset(shop)
    return pstats.Stats(profiler)


def print_profile(kind: str, plain: Shop, shop: Shop, args: argparse.Namespace) -> None:
    """The statements of one commit of each case, and where the captured commits spend."""
    for case in (plain, shop):
        sent = statements(case, args)
        print(f"\n[{kind}] statements of one commit, {case.label} ({len(sent)}):")
        for line in sent:
            print(f"    {line}")
    stats = profile(shop, args)
    print(f"\n[{kind}] cProfile of {args.carts} captured commits, by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"shop_events|listeners|capture", 30)


# -- the engines -------------------------------------------------------------------------------


@contextmanager
def postgres_server(fsync: bool) -> Iterator[str | None]:
    """A throwaway cluster of the test suite's kind, or None when not installed."""
    from tests import postgres

    reason = postgres.unavailable_reason()
    if reason:
        print(f"PostgreSQL skipped: {reason}")
        yield None
        return
    with postgres.cluster(fsync=fsync) as url:
        yield url


@contextmanager
def server_for(variant: str) -> Iterator[str | None]:
    """The database server a variant needs (None for SQLite)."""
    if variant == "sqlite":
        yield None
    else:
        with postgres_server(fsync=variant == POSTGRES) as url:
            yield url


def tracker_on(url: str) -> Tracker:
    """A migrated tracker on ``url``, its jobs off (nothing is sent)."""
    tracker = Tracker(
        Settings.load(
            {
                "database": {"url": url},
                "scheduler": {"enabled": False},
                "api": {"base_url": "http://127.0.0.1:9/api"},
            }
        )
    )
    tracker.migrate()
    return tracker


@contextmanager
def shops(
    kind: str, directory: Path, server: str | None, args: argparse.Namespace
) -> Iterator[tuple[Shop, Shop]]:
    """The shop without the plugin and the shop with it, seeded alike."""
    if kind == "sqlite":
        plain_url = f"sqlite:///{directory / 'plain.db'}"
        shop_url = f"sqlite:///{directory / 'shop.db'}"
    else:
        from tests import postgres

        assert server is not None
        plain_url, shop_url = postgres.new_database(server), postgres.new_database(server)
    plain_engine, shop_engine = create_engine(plain_url), create_engine(shop_url)
    if kind == "sqlite":
        with plain_engine.connect() as conn:  # the mode the plugin leaves the shop's file in
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    first = seed(plain_engine, args.carts, args.lines, args.products)
    plain = Shop("without the plugin", plain_engine, first)
    tracker = tracker_on(shop_url)
    seed(shop_engine, args.carts, args.lines, args.products)
    shop = Shop("with capture", shop_engine, first, tracker, capture_for(tracker, shop_engine))
    try:
        yield plain, shop
    finally:
        assert shop.capture is not None
        shop.capture.close()
        tracker.shutdown()
        tracker.engine.dispose()
        plain_engine.dispose()
        shop_engine.dispose()


def journal_modes(plain: Shop, shop: Shop) -> str:
    """How each SQLite file commits."""
    modes = []
    for case in (plain, shop):
        with case.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        modes.append(f"{case.label}: journal_mode={mode}, synchronous={sync}")
    return "; ".join(modes)


def server_settings(plain: Shop) -> str:
    """The PostgreSQL settings that shape a commit's cost."""
    with plain.engine.connect() as conn:
        found = {
            name: conn.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("server_version", "fsync", "synchronous_commit")
        }
    return ", ".join(f"{name}={value}" for name, value in found.items())


def machine() -> str:
    """The machine and the versions that shape the figures."""
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"SQLAlchemy {sqlalchemy.__version__}, load average {load[0]:.1f} {load[1]:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on each engine and print the figures side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--carts", type=int, default=100, help="carts; one block = one per cart")
    parser.add_argument("--lines", type=int, default=3, help="lines in a cart before the add")
    parser.add_argument("--products", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per case")
    parser.add_argument("--warmup-blocks", type=int, default=4)
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="what to measure (PostgreSQL: a throwaway cluster, fsync on or off)",
    )
    parser.add_argument("--profile", action="store_true", help="statements and a cProfile")
    parser.add_argument(
        "--ways",
        action="store_true",
        help="PostgreSQL: also the captured commit with its write sent at once, and with its "
        "savepoint as a statement of its own",
    )
    args = parser.parse_args(argv)

    print(f"bench_orm_commit: {machine()}")
    print(
        f"{args.carts} carts of {args.lines} lines, one line added per commit; "
        f"{args.warmup_blocks} warm-up + {args.blocks} timed blocks per case "
        f"({args.blocks * args.carts} timed commits per case and engine)"
    )
    results: list[Figures] = []
    for variant in args.engines:
        with server_for(variant) as server:
            if variant != "sqlite" and server is None:
                continue
            with (
                tempfile.TemporaryDirectory(prefix="bench_orm_") as tmp,
                shops(variant, Path(tmp), server, args) as (plain, shop),
            ):
                if variant == "sqlite":
                    print(f"[sqlite] {journal_modes(plain, shop)}")
                else:
                    print(f"[{variant}] {server_settings(plain)}")
                figures, _, _ = measure(variant, plain, shop, args)
                results.append(figures)
                if args.profile:
                    print_profile(variant, plain, shop, args)
                if args.ways and variant != "sqlite":
                    for how, (median, p99) in measure_ways(shop, args).items():
                        print(f"[{variant}] captured, {how}: {median:.1f} / {p99:.1f} µs")
    plugin_listening(True)
    print(f"\n{'engine':<24}{'without µs':>22}{'with capture µs':>22}{'ratio':>16}")
    print(f"{'':<24}{'median / p99':>22}{'median / p99':>22}{'median / p99':>16}")
    for f in results:
        print(
            f"{f.kind:<24}{f.plain[0]:>12.1f} /{f.plain[1]:>8.1f}"
            f"{f.captured[0]:>12.1f} /{f.captured[1]:>8.1f}"
            f"{f.ratio[0]:>9.2f} /{f.ratio[1]:>5.2f}"
        )
    judged = [f for f in results if f.kind != POSTGRES_NO_FSYNC]
    met = all(f.ratio[0] <= GOAL_MEDIAN and f.ratio[1] <= GOAL_P99 for f in judged)
    print(
        f"goal (SQLite and PostgreSQL as run in production): median ≤ {GOAL_MEDIAN:g}×, "
        f"p99 ≤ {GOAL_P99:g}× → {'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

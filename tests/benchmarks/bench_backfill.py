"""Backfill of past orders: 10,000 and 100,000 of a Flask-SQLAlchemy shop's orders, queued by
``flask shop-events backfill orders`` and delivered by a ``shop-events worker`` to a receiver
that enforces the endpoint's limit.

For each mode (Orders API at 200 requests/s, past events at 100/s) and size, on SQLite (the
shop's and the plugin's tables in one file, as the README's install does):

1. the shop's history is written (orders with two lines each), then
   ``flask --app bench_backfill:create_shop shop-events backfill orders`` runs in its own
   process: its seconds, orders/s and peak RSS (``VmHWM``, see
   :func:`bench_delivery.memory_mb`);
2. one ``shop-events worker`` (default settings but ``api.base_url`` and ``database.url``,
   and ``delivery.batch_size`` where a row says so) sends the queued rows to the lean receiver
   of ``bench_delivery`` (its own process), which answers after 100 ms and enforces the
   endpoint's rate as the platform does (a token bucket holding a tenth of a second's worth,
   429 with ``Retry-After: 1`` when empty) and counts every order id of every batch: seconds
   from the worker's start to the last order, requests, 429s (goal 0), missing and twice
   (goal 0), the worker's peak RSS.

Peak RSS goal: under 150 MB, and flat: the same at 10,000 and 100,000 orders.

Run: ``python tests/benchmarks/bench_backfill.py`` (``--sizes 10000 100000``, ``--modes
orders events``, ``--batch 100 1000``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench_account_limit import write_defaults
from bench_delivery import GOAL_RSS_MB, LeanReceiver, machine, memory_mb, run_workers
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from shop_events import Item, OrderMapping, Settings, ShopEvents, Tracker, capture_models
from sqlalchemy import DateTime, ForeignKey, Numeric, String, create_engine
from sqlalchemy.orm import Mapped, mapped_column, relationship

HERE = Path(__file__).resolve().parent
RATES = {"orders": 200.0, "events": 100.0}
"""The endpoint's limit per mode (``api.orders_rate_limit``, ``api.past_events_rate_limit``)."""
MARKS = {
    "orders": b'"externalOrderId":"e-',
    "events": b'{"name":"order_id","value":"e-',
}
"""Where an order's id (``e-<n>``) starts in the body each endpoint receives."""
LATENCY = 0.1
FIRST = datetime(2023, 1, 1)
TIMEOUT = 1200.0

db = SQLAlchemy()


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "bench_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.id")


class OrderLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "bench_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("bench_order.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    quantity: Mapped[int]


def item(line: OrderLine) -> Item:
    return Item(
        name=line.name,
        price=line.price,
        quantity=line.quantity,
        url=f"https://shop.example/p/{line.id % 500}",
        imageurl=f"https://shop.example/i/{line.id % 500}.jpg",
    )


def create_shop() -> Flask:
    """The benchmark's shop: its database from ``BENCH_DATABASE_URL``, the plugin installed."""
    app = Flask("bench_shop")
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BENCH_DATABASE_URL"]
    app.config["SHOP_EVENTS_DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    db.init_app(app)
    ShopEvents(app)
    mapping = OrderMapping(
        Order,
        item=item,
        id=lambda order: f"e-{order.id - 1}",
        email="email",
        total="total",
        status="status",
        created="created_at",
    )
    capture_models(app, order=mapping, check=False)
    return app


def seed(path: Path, count: int) -> float:
    """A SQLite file with ``count`` past orders (two lines each) and the plugin's tables."""
    start = time.perf_counter()
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    db.metadata.create_all(engine)
    chunk = 10_000
    with engine.begin() as conn:
        for first in range(0, count, chunk):
            numbers = range(first, min(count, first + chunk))
            conn.execute(
                Order.__table__.insert(),
                [
                    {
                        "id": n + 1,
                        "email": f"buyer-{n % 20_000}@example.com",
                        "total": Decimal("61.40"),
                        "status": "PAID",
                        "created_at": FIRST + timedelta(minutes=5 * n),
                    }
                    for n in numbers
                ],
            )
            conn.execute(
                OrderLine.__table__.insert(),
                [
                    {
                        "order_id": n + 1,
                        "name": f"Product {k} with a realistic, moderately long name",
                        "price": Decimal("20.70") if k else Decimal("20.00"),
                        "quantity": 1 + k,
                    }
                    for n in numbers
                    for k in range(2)
                ],
            )
    engine.dispose()
    tracker = Tracker(Settings.load({"database": {"url": url}, "scheduler": {"enabled": False}}))
    tracker.migrate()
    tracker.engine.dispose()
    return time.perf_counter() - start


def run_backfill(path: Path, mode: str, directory: Path) -> dict[str, Any]:
    """``flask shop-events backfill orders`` in its own process: seconds, peak RSS, its
    summary line."""
    command = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "bench_backfill:create_shop",
        "shop-events",
        "backfill",
        "orders",
        *(["--as-events"] if mode == "events" else []),
    ]
    env = {
        **os.environ,
        "BENCH_DATABASE_URL": f"sqlite:///{path}",
        "SHOP_EVENTS_SCHEDULER_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])]),
    }
    log = directory / f"backfill-{mode}.log"
    start = time.perf_counter()
    peak = 0.0
    pause = threading.Event()
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=HERE, env=env, stdout=out, stderr=out)
        while process.poll() is None and time.perf_counter() - start < TIMEOUT:
            measured = memory_mb(process.pid)
            if measured is not None:
                peak = max(peak, measured[1])
            pause.wait(0.1)
        if process.poll() is None:
            process.kill()
        code = process.wait(30)
    seconds = time.perf_counter() - start
    output = log.read_text(encoding="utf-8", errors="replace")
    summary = next((line for line in output.splitlines() if line.startswith("read ")), output)
    return {"seconds": seconds, "peak": peak, "exit": code, "summary": summary}


def one_run(seeded: Path, mode: str, count: int, batch: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        directory = Path(tmp)
        path = directory / "shop.db"
        shutil.copyfile(seeded, path)
        queued = run_backfill(path, mode, directory)
        receiver = LeanReceiver(LATENCY, count, rate=RATES[mode], marks=[MARKS[mode]])
        try:
            url = f"sqlite:///{path}"
            config = write_defaults(directory / "worker.toml", receiver.base_url, url)
            if batch is not None:
                text = config.read_text() + f"\n[delivery]\nbatch_size = {batch}\n"
                config.write_text(text, encoding="utf-8")
            run = run_workers(
                config, 1, count, lambda: int(receiver.stats("count")["ids"]), TIMEOUT, directory
            )
            stats = receiver.stats()
        finally:
            receiver.stop()
    return {
        "mode": mode,
        "orders": count,
        "batch_size": batch or 100,
        "backfill s": f"{queued['seconds']:.1f}",
        "backfill orders/s": f"{count / queued['seconds']:.0f}",
        "backfill peak RSS MB": f"{queued['peak']:.0f}",
        "backfill exit": queued["exit"],
        "delivery s": f"{run.seconds:.1f}",
        "requests": stats["arrived"] + stats["refused"],
        "429s": stats["refused"],
        "most in 1 s": stats["most_in_1s"],
        "missing": stats["missing"],
        "twice": stats["twice"],
        "worker peak RSS MB": "/".join(f"{p:.0f}" for p in run.max_rss_mb),
        "worker exit": run.exit_codes,
        "summary": queued["summary"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--modes", nargs="+", choices=list(RATES), default=list(RATES))
    parser.add_argument(
        "--batch", nargs="+", type=int, default=[100, 1000], help="delivery.batch_size values"
    )
    args = parser.parse_args(argv)
    print(machine(), flush=True)
    print(f"goal: 0 429s, 0 missing, 0 twice, peak RSS < {GOAL_RSS_MB:.0f} MB and flat", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backfill-seed-") as tmp:
        for count in args.sizes:
            seeded = Path(tmp) / f"seeded-{count}.db"
            print(f"seeding {count:,} orders: {seed(seeded, count):.1f}s", flush=True)
            for mode in args.modes:
                for batch in args.batch:
                    row = one_run(seeded, mode, count, None if batch == 100 else batch)
                    print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
                    rows.append(row)
            seeded.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

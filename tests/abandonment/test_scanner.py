"""Abandonment scanning: timing edges, and scanners racing on one database."""

from __future__ import annotations

import logging
import multiprocessing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from shop_events import Item, Settings, Tracker
from shop_events.storage.enums import Subject
from shop_events.storage.tables import carts, outbox
from sqlalchemy import event, func, select

from tests.support import SettingsFactory

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CARTS = 300
SCANNERS = 4


def _scan_in_process(settings: Settings, barrier: Any, results: Any) -> None:
    tracker = Tracker(settings, clock=lambda: NOW)
    barrier.wait(timeout=60)
    result = tracker.scan()
    results.put((result.abandoned, result.enqueued))
    tracker.engine.dispose()


@pytest.mark.slow
def test_scanners_racing_in_several_processes_queue_each_abandonment_once(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(abandoned_cart={"contact_interval": "0s", "scan_batch": 25})
    writer = Tracker(settings, clock=lambda: NOW - timedelta(hours=2))
    writer.migrate()
    for i in range(CARTS):
        writer.cart_updated(f"cart-{i}", email=f"s{i}@example.com", items=[Item(name="A", price=i)])
    recent = Tracker(settings, clock=lambda: NOW - timedelta(minutes=5))
    recent.cart_updated("not-due", email="busy@example.com", items=[Item(name="B", price=1)])
    writer.engine.dispose()
    recent.engine.dispose()

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(SCANNERS)
    results = context.Queue()
    workers = [
        context.Process(target=_scan_in_process, args=(settings, barrier, results))
        for _ in range(SCANNERS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    counts = [results.get(timeout=5) for _ in workers]

    assert sum(abandoned for abandoned, _ in counts) == CARTS
    assert sum(enqueued for _, enqueued in counts) == CARTS
    check = Tracker(settings)
    with check.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == CARTS
        assert (
            conn.execute(select(func.count(func.distinct(outbox.c.subject_id)))).scalar() == CARTS
        )
        states = dict(
            conn.execute(select(carts.c.state, func.count()).group_by(carts.c.state)).all()
        )
    assert states == {"abandoned": CARTS, "active": 1}
    check.engine.dispose()


def test_a_cart_touched_during_the_scan_is_not_abandoned(
    make_settings: SettingsFactory,
) -> None:
    """The shopper comes back after the scan started, on another connection, just before the
    scan's first write: on SQLite its ``BEGIN IMMEDIATE`` (the one write lock), on PostgreSQL
    and MySQL the statement that locks the due carts (``… FOR UPDATE``). The scan must judge the
    cart by what is stored then, not by what it saw when it started."""
    settings = make_settings(abandoned_cart={"contact_interval": "0s"})
    old = Tracker(settings, clock=lambda: NOW - timedelta(hours=2))
    old.migrate()
    for cart_id in ("touched", "idle"):
        old.cart_updated(cart_id, email=f"{cart_id}@example.com", items=[Item(name="A", price=1)])
    old.engine.dispose()
    shopper = Tracker(settings, clock=lambda: NOW)
    scanner = Tracker(settings, clock=lambda: NOW)
    touched: list[str] = []

    def touch_before_the_first_write(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        first_write = statement.startswith("BEGIN IMMEDIATE") or (
            carts.name in statement and "FOR UPDATE" in statement
        )
        if first_write and not touched:
            shopper.cart_updated(
                "touched", email="touched@example.com", items=[Item(name="A", price=2)]
            )
            touched.append(statement)

    event.listen(scanner.engine, "before_cursor_execute", touch_before_the_first_write)
    try:
        result = scanner.scan()
    finally:
        event.remove(scanner.engine, "before_cursor_execute", touch_before_the_first_write)

    assert touched, "the scan never wrote"
    assert result.abandoned == 1
    with scanner.engine.connect() as conn:
        states = dict(conn.execute(select(carts.c.cart_id, carts.c.state)).all())
        queued = conn.execute(select(outbox.c.subject_id)).scalars().all()
    assert states == {"touched": "active", "idle": "abandoned"}
    assert queued == ["idle"]
    later = Tracker(settings, clock=lambda: NOW + timedelta(hours=1)).scan()
    assert later.abandoned == 1
    for made in (shopper, scanner):
        made.engine.dispose()


def test_scan_is_bounded_and_takes_every_due_cart_in_batches(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(abandoned_cart={"contact_interval": "0s", "scan_batch": 7})
    writer = Tracker(settings, clock=lambda: NOW - timedelta(hours=3))
    writer.migrate()
    for i in range(50):
        writer.cart_updated(f"c{i}", email=f"c{i}@example.com", items=[Item(name="A", price=1)])
    result = Tracker(settings, clock=lambda: NOW).scan()
    assert (result.abandoned, result.enqueued) == (50, 50)


def test_disabled_flow_scans_nothing(make_settings: SettingsFactory) -> None:
    settings = make_settings(abandoned_cart={"enabled": False})
    writer = Tracker(settings, clock=lambda: NOW - timedelta(hours=3))
    writer.migrate()
    writer.cart_updated("c", email="c@example.com", items=[Item(name="A", price=1)])
    assert Tracker(settings, clock=lambda: NOW).scan().abandoned == 0


def test_a_cart_whose_event_cannot_be_built_is_suppressed_and_the_scan_goes_on(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Accepted at capture, too big for ``api.max_event_bytes`` at scan time: that cart is
    suppressed as ``unbuildable`` (the error logged, the count on the health page) and every
    other due cart is still abandoned, in this scan and the next."""
    settings = make_settings(api={"max_event_bytes": 1024})
    old = Tracker(settings, clock=lambda: NOW - timedelta(hours=2))
    long_url = "https://shop.example/cart/" + "x" * 1100
    old.cart_updated(
        "too-big", email="big@example.com", items=[Item(name="A", price=1)], restore_url=long_url
    )
    for i in range(3):
        old.cart_updated(f"fine-{i}", email=f"f{i}@example.com", items=[Item(name="A", price=1)])
    scanner = Tracker(settings, clock=lambda: NOW)

    with caplog.at_level(logging.ERROR, logger="shop_events.abandonment.scanner"):
        result = scanner.scan()

    assert (result.abandoned, result.suppressed, result.unbuildable) == (3, 1, 1)
    with scanner.engine.connect() as conn:
        rows = {r.cart_id: (r.state, r.skip_reason) for r in conn.execute(select(carts))}
        queued = set(conn.execute(select(outbox.c.subject_id)).scalars())
    assert rows["too-big"] == ("suppressed", "unbuildable")
    assert queued == {"fine-0", "fine-1", "fine-2"}
    assert "'too-big'" in caplog.text and "over 1024 bytes" in caplog.text
    assert scanner.health().suppressed == {Subject.CART: {"unbuildable": 1}}

    later = Tracker(settings, clock=lambda: NOW - timedelta(minutes=61))
    later.cart_updated("fine-later", email="l@example.com", items=[Item(name="A", price=1)])
    assert scanner.scan().abandoned == 1
    for made in (old, scanner, later):
        made.engine.dispose()

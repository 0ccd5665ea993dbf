"""Abandonment scanning: timing edges, and scanners racing on one database."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from typing import Any

from shop_events import Item, Settings, Tracker
from shop_events.storage.tables import carts, outbox
from sqlalchemy import func, select

from tests.conftest import SettingsFactory

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CARTS = 300
SCANNERS = 4


def _scan_in_process(settings: Settings, barrier: Any, results: Any) -> None:
    tracker = Tracker(settings, clock=lambda: NOW)
    barrier.wait(timeout=60)
    result = tracker.scan()
    results.put((result.abandoned, result.enqueued))
    tracker.engine.dispose()


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
    settings = make_settings()
    old = Tracker(settings, clock=lambda: NOW - timedelta(hours=1))
    old.migrate()
    old.cart_updated("c", email="a@example.com", items=[Item(name="A", price=1)])
    # the shopper comes back just before the scan runs with its older idea of "now"
    Tracker(settings, clock=lambda: NOW).cart_updated(
        "c", email="a@example.com", items=[Item(name="A", price=1)]
    )
    assert Tracker(settings, clock=lambda: NOW).scan().abandoned == 0
    assert Tracker(settings, clock=lambda: NOW + timedelta(hours=1)).scan().abandoned == 1


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

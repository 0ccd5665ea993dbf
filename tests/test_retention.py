"""Retention: finished activity and settled events older than ``retention.days`` are purged in
batches; active activity, unsent events and dead letters stay (dead letters go only on request).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker, retention
from shop_events.storage.tables import browses, caps, carts, consent, orders, outbox, registrations
from shop_events.testing import Receiver, Reply
from sqlalchemy import select

from tests.support import SettingsFactory

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ITEMS = [Item(name="Hair styler", price="341", url="https://shop.example/p/1")]
BATCH = 2
MONTH = timedelta(days=31)
FAR_RETRY = "3600"  # retried in an hour; nothing dispatches again, so the row stays pending


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def tracker(make_settings: SettingsFactory) -> Iterator[Tracker]:
    made = Tracker(make_settings(retention={"batch": BATCH}))
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every delete statement retention runs, as ``(table, rows deleted)``."""
    seen: list[tuple[str, int]] = []
    real = retention.targets

    def spy(table: str, delete_batch: retention.DeleteBatch) -> retention.DeleteBatch:
        def run(conn: Any, cutoff: Any, limit: int) -> int:
            deleted = delete_batch(conn, cutoff, limit)
            seen.append((table, deleted))
            return deleted

        return run

    def spied(dead_letters: bool = False) -> dict[str, retention.DeleteBatch]:
        return {table: spy(table, run) for table, run in real(dead_letters).items()}

    monkeypatch.setattr(retention, "targets", spied)
    return seen


def keys(tracker: Tracker, table: Any, column: str) -> set[Any]:
    with tracker.engine.connect() as conn:
        return set(conn.execute(select(table.c[column])).scalars())


def outbox_by_status(tracker: Tracker) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with tracker.engine.connect() as conn:
        for row in conn.execute(select(outbox.c.status, outbox.c.event_type_key)):
            out.setdefault(row.status, set()).add(row.event_type_key)
    return out


def old_history(tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory) -> None:
    """A day of shop history: sent, superseded, dead and pending events, finished and active
    carts, browses and registrations, orders and caps.
    """
    for n in range(5):
        tracker.cart_updated(f"old-{n}", email=f"s{n}@example.com", items=ITEMS)
    tracker.cart_updated("old-ordered", email="x@example.com", items=ITEMS)
    tracker.product_viewed(email="b0@example.com", item=ITEMS[0])
    tracker.product_viewed(email="b1@example.com", item=ITEMS[0])
    tracker.registration_started("r0@example.com")
    tracker.registration_started("r1@example.com")
    tracker.opted_out("gone@example.com")
    clock.tick(timedelta(minutes=1))
    tracker.registration_completed("r0@example.com")
    tracker.order_placed("order-b1", email="b1@example.com", items=ITEMS)  # converts b1
    clock.tick(timedelta(hours=25))
    assert tracker.scan().by_flow == {"cart": 6, "browse": 1, "registration": 1}
    tracker.order_placed("order-x", email="x@example.com", items=ITEMS)  # supersedes old-ordered
    result = tracker.dispatch()
    assert (result.sent, result.superseded) == (9, 1)

    receiver.script(Reply(400, "The event should have the following params: [phone]"))
    tracker.custom_event("will_die", key_value="d@example.com")
    assert tracker.dispatch().dead == 1
    receiver.script(Reply(500, "down", headers={"Retry-After": FAR_RETRY}))
    tracker.custom_event("still_pending", key_value="p@example.com")
    assert tracker.dispatch().retried == 1

    tracker.cart_updated("old-active", email="a@example.com", items=ITEMS)  # never scanned
    tracker.product_viewed(email="a@example.com", item=ITEMS[0])
    tracker.registration_started("a@example.com")


def test_purge_deletes_old_finished_rows_in_batches_and_keeps_the_rest(
    tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    batches: list[tuple[str, int]],
) -> None:
    old_history(tracker, receiver, clock)
    clock.move_to(START + timedelta(days=30))  # the oldest rows are exactly 30 days old
    assert set(tracker.purge().values()) == {0}

    clock.tick(MONTH)
    tracker.cart_updated("fresh", email="f@example.com", items=ITEMS)
    tracker.order_placed("order-fresh", email="f@example.com", items=ITEMS)
    batches.clear()
    counts = tracker.purge()

    assert counts == {
        "shop_events_outbox": 10,  # 9 sent + 1 superseded
        "shop_events_carts": 6,  # 5 abandoned + 1 converted
        "shop_events_browses": 2,  # 1 abandoned + 1 converted
        "shop_events_registrations": 2,  # 1 abandoned + 1 completed
        "shop_events_orders": 2,
        "shop_events_caps": 7,  # 5 carts, 1 browse, 1 registration
        # the recovery report's reminders and recovered orders are kept for recovery.keep
        "shop_events_reminders": 0,
        "shop_events_recoveries": 0,
    }
    assert outbox_by_status(tracker) == {
        "dead": {"will_die"},
        "pending": {"still_pending", "orderCreated"},  # the fresh order's event
    }
    assert keys(tracker, carts, "cart_id") == {"old-active", "fresh"}
    assert keys(tracker, browses, "browse_key") == {"e:a@example.com"}
    assert keys(tracker, registrations, "email") == {"a@example.com"}
    assert keys(tracker, orders, "order_id") == {"order-fresh"}
    assert keys(tracker, caps, "contact") == set()
    assert keys(tracker, consent, "email") == {"gone@example.com"}  # consent is never purged

    # in batches of retention.batch rows: no long transaction on a big table
    assert batches, "retention deleted nothing through _delete_batch"
    assert max(n for _, n in batches) <= BATCH, batches
    per_table = {name: sum(1 for t, _ in batches if t == name) for name, _ in batches}
    assert per_table["shop_events_outbox"] == 10 // BATCH + 1
    assert per_table["shop_events_caps"] == 7 // BATCH + 1
    assert all(tracker.purge()[name] == 0 for name in counts)  # nothing more to do


def test_dead_letters_go_only_when_asked(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    old_history(tracker, receiver, clock)
    clock.tick(MONTH)
    tracker.purge()
    assert "dead" in outbox_by_status(tracker)
    counts = tracker.purge(dead_letters=True)
    assert counts["shop_events_outbox"] == 1
    assert outbox_by_status(tracker) == {"pending": {"still_pending"}}


def test_older_than_overrides_retention_days(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    old_history(tracker, receiver, clock)
    clock.tick(timedelta(days=2))
    assert tracker.purge()["shop_events_outbox"] == 0
    assert tracker.purge(older_than=timedelta(days=1))["shop_events_outbox"] == 10


def test_retention_days_is_configurable(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(retention={"days": 7}))
    tracker.migrate()
    try:
        tracker.custom_event("wishlist", key_value="w@example.com")
        tracker.dispatch()
        clock.tick(timedelta(days=7) - timedelta(seconds=1))
        assert tracker.purge()["shop_events_outbox"] == 0
        clock.tick(timedelta(seconds=2))
        assert tracker.purge()["shop_events_outbox"] == 1
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def test_the_scheduler_runs_retention_at_its_interval(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = threading.Event()

    def purge(self: Tracker, *args: Any, **kwargs: Any) -> dict[str, int]:
        ran.set()
        return {}

    monkeypatch.setattr(Tracker, "purge", purge)
    settings = make_settings(scheduler={"enabled": True}, retention={"interval": "2h"})
    tracker = Tracker(settings)
    tracker.migrate()
    try:
        tracker.start()
        assert ran.wait(10), "the retention job did not run when the scheduler started"
        intervals = tracker.scheduler.intervals
        assert set(intervals) == {"scan", "dispatch", "retention", "watch"}
        assert intervals["retention"] == timedelta(hours=2)
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def test_purge_keeps_frequency_caps_for_the_longest_contact_interval(
    make_settings: Any,
) -> None:
    """A short ``older_than`` must not let a contact be reminded again inside its interval."""
    from datetime import UTC, datetime, timedelta

    from shop_events import Tracker
    from shop_events.storage import caps
    from shop_events.storage.tables import caps as caps_table
    from sqlalchemy import func, select

    settings = make_settings(abandoned_browse={"contact_interval": "7d"})
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    tracker = Tracker(settings, clock=lambda: now)
    tracker.migrate()
    with tracker.engine.begin() as conn:
        for contact, days in (("a@example.com", 3), ("b@example.com", 8)):
            caps.take(conn, "abandoned_browse", contact, now - timedelta(days=days), timedelta(1))
    tracker.purge(older_than=timedelta(days=1))
    with tracker.engine.connect() as conn:
        left = conn.execute(select(caps_table.c.contact)).scalars().all()
        assert conn.execute(select(func.count()).select_from(caps_table)).scalar() == 1
    assert left == ["a@example.com"]


def test_reminders_and_recovered_orders_are_kept_for_recovery_keep(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    """The recovery report reads them: retention.days does not erase them, recovery.keep does."""
    tracker = Tracker(make_settings(recovery={"keep": "90d"}))
    tracker.migrate()
    tracker.cart_updated("cart-1", email="ann@example.com", items=ITEMS)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    assert tracker.dispatch().sent == 1
    clock.tick(timedelta(hours=1))
    tracker.order_placed("order-1", email="ann@example.com", items=ITEMS)
    tracker.dispatch()
    clock.tick(timedelta(days=60))
    counts = tracker.purge()
    assert (counts["shop_events_reminders"], counts["shop_events_recoveries"]) == (0, 0)
    assert (
        tracker.recovery_report(since=START, until=START + timedelta(days=2)).cart.recovered_orders
        == 1
    )
    clock.tick(timedelta(days=31))
    counts = tracker.purge()
    assert (counts["shop_events_reminders"], counts["shop_events_recoveries"]) == (1, 1)
    tracker.shutdown()
    tracker.engine.dispose()

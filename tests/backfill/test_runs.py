"""A backfill run queues each order once whatever runs overlap, continues after its checkpoint
when interrupted, and never starts a live flow; on every engine."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from shop_events import Item
from shop_events.backfill import run as backfill_run
from shop_events.storage.tables import carts, orders, outbox, recoveries
from shop_events.testing import Receiver
from sqlalchemy import func, select

from tests.support import TrackerFactory, deliver_all, past_order, status_counts


def dedupe_keys(tracker: Any) -> list[str]:
    with tracker.engine.connect() as conn:
        return sorted(conn.execute(select(outbox.c.dedupe_key)).scalars())


def test_the_same_order_twice_and_overlapping_runs_are_one_order_at_the_receiver(
    make_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_tracker()
    first = tracker.backfill_orders([past_order(n) for n in (*range(10), 3)], page_size=4)
    assert (first.read, first.queued, first.already) == (11, 10, 1)
    again = tracker.backfill_orders([past_order(n) for n in range(5, 15)])
    assert (again.queued, again.already) == (5, 5)
    assert len(dedupe_keys(tracker)) == 15
    assert deliver_all(tracker) == 15
    ids = [order["externalOrderId"] for order in receiver.orders]
    assert sorted(ids) == sorted(f"past-{n}" for n in range(15))
    assert tracker.backfill_orders([past_order(n) for n in range(15)]).queued == 0


def test_a_changed_status_sends_the_order_again_as_an_update_of_the_same_order(
    make_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_tracker()
    tracker.backfill_orders([past_order(1, status="NEW")])
    tracker.backfill_orders([past_order(1, status="DELIVERED")])
    deliver_all(tracker)
    sent = [(o["externalOrderId"], o["status"]) for o in receiver.orders]
    assert sent == [("past-1", "NEW"), ("past-1", "DELIVERED")]


def test_past_events_are_queued_once_whatever_runs_overlap(
    make_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_tracker()
    tracker.backfill_orders([past_order(n) for n in range(4)], as_events=True)
    report = tracker.backfill_orders([past_order(n) for n in range(2, 6)], as_events=True)
    assert (report.queued, report.already, report.rows) == (2, 2, 4)
    assert deliver_all(tracker) == 12
    sent = [(e["eventTypeKey"], Receiver.params(e)["order_id"]) for e in receiver.past_events]
    assert len(sent) == len(set(sent)) == 12


def test_an_order_captured_live_is_left_to_its_live_events(
    make_tracker: TrackerFactory,
) -> None:
    tracker = make_tracker()
    live = past_order(1)
    tracker.order_placed("past-1", **{k: live[k] for k in ("email", "items", "total")})
    as_events = tracker.backfill_orders([past_order(1), past_order(2)], as_events=True)
    assert (as_events.live, as_events.queued) == (1, 1)
    # without orders.api the live capture sent no Orders API order: the backfill does
    assert tracker.backfill_orders([past_order(1)]).queued == 1
    with_api = make_tracker(orders={"api": True})
    assert with_api.backfill_orders([past_order(1)]).live == 1


def test_a_backfill_starts_no_live_flow(make_tracker: TrackerFactory, receiver: Receiver) -> None:
    lamp = Item(name="Lamp", price="19.90")
    with freeze_time("2026-11-26 10:00:00") as frozen:
        tracker = make_tracker()
        tracker.cart_updated("cart-ann", email="buyer-1@example.com", items=[lamp])
        frozen.tick(timedelta(minutes=61))
        tracker.scan()
        deliver_all(tracker)  # Ann's reminder went out: an order of hers now would be recovered
        tracker.cart_updated("cart-bob", email="buyer-2@example.com", items=[lamp])
        frozen.tick(timedelta(minutes=61))
        tracker.scan()  # Bob's reminder is queued, not sent
        tracker.cart_updated("cart-cy", email="buyer-3@example.com", items=[lamp])
        tracker.product_viewed(email="buyer-3@example.com", item=lamp)
        with tracker.engine.connect() as conn:
            carts_before = conn.execute(select(carts).order_by(carts.c.cart_id)).all()
        history = [past_order(n) for n in (1, 2, 3)]
        tracker.backfill_orders(history)
        tracker.backfill_orders(history, as_events=True)
        with tracker.engine.connect() as conn:
            assert conn.execute(select(carts).order_by(carts.c.cart_id)).all() == carts_before
            assert conn.execute(select(func.count()).select_from(orders)).scalar_one() == 0
            assert conn.execute(select(func.count()).select_from(recoveries)).scalar_one() == 0
            live_paths = conn.execute(
                select(outbox.c.event_type_key).where(outbox.c.api_path == "v1/event")
            ).scalars()
            assert sorted(live_paths) == ["abandoned_cart", "abandoned_cart"]
        deliver_all(tracker)
        frozen.tick(timedelta(minutes=61))
        tracker.scan()  # Cy's cart was not converted by the backfill either
        deliver_all(tracker)
    assert status_counts(tracker.engine).get("superseded", 0) == 0
    reminded = sorted(e["keyValue"] for e in receiver.events)
    assert reminded == ["buyer-1@example.com", "buyer-2@example.com", "buyer-3@example.com"]
    assert {e["eventTypeKey"] for e in receiver.events} == {"abandoned_cart"}
    assert len(receiver.orders) == 3 and len(receiver.past_events) == 6


def source(count: int, fail_at: int | None = None) -> Iterator[dict[str, Any]]:
    """The shop's orders, read one by one; its database goes away at ``fail_at``."""
    for n in range(count):
        if n == fail_at:
            raise ConnectionError("the shop's database went away")
        yield past_order(n)


def test_a_run_interrupted_at_page_3_continues_after_its_checkpoint_and_queues_nothing_twice(
    make_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_tracker()
    with pytest.raises(ConnectionError):
        tracker.backfill_orders(source(10, fail_at=7), page_size=3, checkpoint="shop")
    assert tracker.backfill_checkpoint("shop") == "past-5"
    assert len(dedupe_keys(tracker)) == 6
    after = tracker.backfill_checkpoint("shop")
    rest = [past_order(n) for n in range(10) if f"past-{n}" > str(after)]
    report = tracker.backfill_orders(rest, page_size=3, checkpoint="shop")
    assert (report.queued, report.already) == (4, 0)
    assert tracker.backfill_checkpoint("shop") == "past-9"
    assert deliver_all(tracker) == 10
    ids = sorted(order["externalOrderId"] for order in receiver.orders)
    assert ids == [f"past-{n}" for n in range(10)]


def test_a_page_whose_transaction_fails_leaves_neither_its_rows_nor_its_checkpoint(
    make_tracker: TrackerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = make_tracker()
    calls = {"n": 0}
    put_value = backfill_run.pause.put_value

    def failing_third(*args: Any) -> None:
        calls["n"] += 1
        put_value(*args)
        if calls["n"] == 3:
            raise OSError("the disk is full")

    monkeypatch.setattr(backfill_run.pause, "put_value", failing_third)
    with pytest.raises(OSError):
        tracker.backfill_orders(source(12), page_size=3, checkpoint="shop")
    monkeypatch.undo()
    assert tracker.backfill_checkpoint("shop") == "past-5"
    assert len(dedupe_keys(tracker)) == 6
    report = tracker.backfill_orders(source(12), page_size=3, checkpoint="shop")
    assert (report.queued, report.already) == (6, 6)
    assert len(dedupe_keys(tracker)) == 12
    assert tracker.backfill_checkpoint("shop") == "past-11"

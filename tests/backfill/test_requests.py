"""What reaches the platform: Orders API requests of at most 1000 orders, past events requests of
at most 500 events with the order's time as ``occurred``, each checked by the real receiver."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from shop_events import Item
from shop_events.delivery import dispatcher
from shop_events.testing import Receiver

from tests.support import PLACED, TrackerFactory, deliver_all, past_order


def requests_to(receiver: Receiver, path: str) -> list[Any]:
    """The bodies of the accepted requests to ``path``, in the order they arrived."""
    found = [r for r in receiver.requests if r.path == path]
    assert all(r.status == 200 for r in found), [r.reply for r in found if r.status != 200]
    return [r.json for r in found]


def test_orders_go_to_the_orders_api_in_requests_of_at_most_1000(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker(delivery={"batch_size": 2500})
    report = tracker.backfill_orders(past_order(n) for n in range(2500))
    assert (report.queued, report.rows) == (2500, 2500)
    assert deliver_all(tracker) == 2500
    sizes = [len(body["orders"]) for body in requests_to(receiver, "/api/v1/orders")]
    assert sorted(sizes, reverse=True) == [1000, 1000, 500]
    orders = {order["externalOrderId"]: order for order in receiver.orders}
    assert len(orders) == len(receiver.orders) == 2500
    assert orders["past-7"] == {
        "externalOrderId": "past-7",
        "externalCustomerId": "buyer-7@example.com",
        "email": "buyer-7@example.com",
        "status": "DELIVERED",
        "totalCost": 341.0,
        "date": (PLACED + timedelta(minutes=7)).isoformat(timespec="seconds"),
        "items": [{"externalItemId": "hs-7", "name": "Hair styler", "cost": 341.0, "quantity": 1}],
        "currency": "EUR",
    }
    assert receiver.events == [] and receiver.past_events == []


def test_past_events_go_in_requests_of_at_most_500_with_the_order_time_as_occurred(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker(delivery={"batch_size": 1200})
    report = tracker.backfill_orders(
        (past_order(n, status="PAID") for n in range(1200)), as_events=True
    )
    assert (report.queued, report.rows) == (1200, 1200)
    assert deliver_all(tracker) == 1200
    bodies = requests_to(receiver, "/api/v1/past_events")
    assert sorted((len(body["events"]) for body in bodies), reverse=True) == [500, 500, 200]
    assert all(set(body) == {"events"} for body in bodies)
    events = {Receiver.params(e)["order_id"]: e for e in receiver.past_events}
    assert len(events) == 1200
    first = events["past-0"]
    assert (first["eventTypeKey"], first["keyValue"]) == ("orderCreated", "buyer-0@example.com")
    assert first["occurred"] == "2024-03-22T14:30"
    assert events["past-61"]["occurred"] == "2024-03-22T15:31"
    assert receiver.events == [] and receiver.orders == []


def test_a_past_event_has_the_params_of_the_live_order_event(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker()
    order = past_order(1, status="PAID")
    fields = {k: order[k] for k in ("email", "items", "total", "currency", "status")}
    tracker.order_placed("live-1", **fields)
    tracker.backfill_orders([order], as_events=True)
    deliver_all(tracker)
    [live] = receiver.events
    [past] = receiver.past_events
    assert set(past) == {"eventTypeKey", "keyValue", "params", "occurred"}
    assert past["eventTypeKey"] == live["eventTypeKey"] == "orderCreated"
    assert past["params"] == [
        {**p, "value": "past-1"} if p["name"] == "order_id" else p for p in live["params"]
    ]


def test_an_order_whose_status_has_its_own_event_sends_that_one_too_after_the_placement(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker()
    tracker.backfill_orders(
        [past_order(1), past_order(2, status="cancelled"), past_order(3, status="NEW")],
        as_events=True,
    )
    assert deliver_all(tracker) == 5
    sent = [(e["eventTypeKey"], Receiver.params(e)["order_id"]) for e in receiver.past_events]
    assert sorted(sent) == [
        ("orderCancelled", "past-2"),
        ("orderCreated", "past-1"),
        ("orderCreated", "past-2"),
        ("orderCreated", "past-3"),
        ("orderDelivered", "past-1"),
    ]
    assert sent.index(("orderCreated", "past-1")) < sent.index(("orderDelivered", "past-1"))
    assert {e["occurred"] for e in receiver.past_events if "past-1" in str(e)} == {
        "2024-03-22T14:31"
    }


def test_occurred_is_written_in_the_configured_zone(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker(backfill={"timezone": "Europe/Kyiv"})
    tracker.backfill_orders([past_order(0, status="NEW")], as_events=True)
    deliver_all(tracker)
    assert [e["occurred"] for e in receiver.past_events] == ["2024-03-22T16:30"]


def test_with_api_v2_past_events_go_to_v2_with_nested_json(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker(api={"version": "v2"})
    tracker.backfill_orders([past_order(0, status="NEW")], as_events=True)
    deliver_all(tracker)
    [body] = requests_to(receiver, "/api/v2/past_events")
    [event] = body["events"]
    items = Receiver.params(event)["items"]
    assert items == {"array": [{"name": "Hair styler", "price": "341.00", "quantity": "1",
                                "sku": "hs-0"}]}  # fmt: skip


def test_live_events_orders_and_past_events_claimed_together_go_in_their_own_requests(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver
) -> None:
    tracker = make_sqlite_tracker()
    tracker.backfill_orders([past_order(n) for n in range(3)])
    tracker.backfill_orders([past_order(n, status="NEW") for n in range(3, 6)], as_events=True)
    tracker.custom_event("wishlist", key_value="ann@example.com", params={"n": 1})
    lamp = Item(name="Lamp", price="19.90")
    tracker.order_placed("live-9", email="bob@example.com", items=[lamp])
    result = tracker.dispatch()
    assert (result.claimed, result.sent) == (8, 8)
    paths = sorted(r.path for r in receiver.requests)
    assert paths == [
        "/api/v1/event",
        "/api/v1/event",
        "/api/v1/orders",
        "/api/v1/past_events",
    ]


def test_the_requests_of_a_backlog_go_out_together_not_each_after_the_last_ones_answer(
    make_sqlite_tracker: TrackerFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a claim of orders is one request: the next claim must not wait for its answer
    monkeypatch.setattr(dispatcher, "RESULT_WAIT", 30.0)
    tracker = make_sqlite_tracker(delivery={"batch_size": 2, "threads": 8})
    tracker.backfill_orders(past_order(n) for n in range(6))
    receiver.hold()
    sending = threading.Thread(target=tracker.dispatch)
    sending.start()
    try:
        assert receiver.wait_for_arrivals(3, timeout=10)  # all three while none is answered
    finally:
        receiver.release()
        sending.join(timeout=30)
    assert not sending.is_alive()
    assert len(receiver.orders) == 6

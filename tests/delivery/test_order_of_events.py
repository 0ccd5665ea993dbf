"""Events of one subject (an order, a contact) reach the platform in the order they were queued;
one waiting for its retry holds the later ones of its subject, and no other."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver, Reply

from tests.support import SettingsFactory, status_counts

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
ITEMS = [Item(name="Product", price="10", url="https://shop.example/p/1")]


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen  # type: ignore[misc]


def about(text: str, event_type: str | None = None) -> Callable[[Any], bool]:
    """Matches the bodies that mention ``text`` (and are of ``event_type``, when given)."""

    def match(body: Any) -> bool:
        if event_type is not None and body.get("eventTypeKey") != event_type:
            return False
        return text in json.dumps(body)

    return match


def accepted(receiver: Receiver, text: str) -> list[str]:
    """The event types accepted for bodies mentioning ``text``, in the order they arrived."""
    return [body["eventTypeKey"] for body in receiver.events if about(text)(body)]


def drain(tracker: Tracker, clock: FrozenDateTimeFactory, passes: int = 10) -> None:
    for _ in range(passes):
        tracker.dispatch()
        if not status_counts(tracker.engine)[OutboxStatus.PENDING.value]:
            return
        clock.tick(timedelta(hours=1))


def test_an_orders_events_wait_for_its_first_event_to_be_delivered(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(delivery={"threads": 8}))
    tracker.migrate()
    tracker.order_placed("order-1", email="ann@example.com", items=ITEMS, total="10")
    tracker.order_status_changed("order-1", status="SHIPPED")
    tracker.order_status_changed("order-1", status="DELIVERED")
    tracker.order_placed("order-2", email="bob@example.com", items=ITEMS, total="10")
    receiver.rule(about("order-1", "orderCreated"), Reply(500, "try later"))

    first = tracker.dispatch()
    assert accepted(receiver, "order-1") == []  # refused, and the later two were held
    assert accepted(receiver, "order-2") == ["orderCreated"]  # another order is not held
    assert (first.retried, first.sent) == (1, 1)

    receiver.clear()
    drain(tracker, clock)
    tracker.shutdown()
    tracker.engine.dispose()
    assert accepted(receiver, "order-1") == ["orderCreated", "orderUpdated", "orderDelivered"]


def test_one_subjects_events_are_never_on_the_wire_together(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(delivery={"threads": 16}))
    tracker.migrate()
    for n in range(5):
        tracker.contact_upserted("ann@example.com", first_name=f"Ann{n}", created=n == 0)
        tracker.contact_upserted(f"other-{n}@example.com", first_name="Other", created=True)
    receiver.latency = 0.05
    drain(tracker, clock)
    tracker.shutdown()
    tracker.engine.dispose()
    names = [
        Receiver.params(body)["firstName"]
        for body in receiver.events
        if body["keyValue"] == "ann@example.com"
    ]
    assert names == [f"Ann{n}" for n in range(5)]
    # each of Ann's requests was answered before the next one of hers arrived
    hers = [r for r in receiver.requests if r.json and r.json.get("keyValue") == "ann@example.com"]
    for before, after in itertools.pairwise(hers):
        assert after.arrived is not None and before.time <= after.arrived

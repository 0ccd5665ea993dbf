"""A visitor identified once keeps browsing as that contact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from freezegun import freeze_time
from shop_events import Item, Tracker
from shop_events.testing import Receiver


def test_views_after_identify_follow_the_contact(tracker: Tracker, receiver: Receiver) -> None:
    with freeze_time(datetime(2026, 11, 26, 9, tzinfo=UTC)) as clock:
        tracker.identify("v-9", "ann@example.com")  # at login, before any view
        tracker.product_viewed(visitor_id="v-9", item=Item(name="Lamp", price=10))
        tracker.product_viewed(visitor_id="v-9", item=Item(name="Rug", price=20))
        clock.tick(timedelta(hours=1))
        assert tracker.scan().abandoned == 1
        tracker.dispatch()
    [event] = receiver.events
    assert event["keyValue"] == "ann@example.com"
    names = [i["name"] for i in json.loads(Receiver.params(event)["items"])["array"]]
    assert names == ["Rug", "Lamp"]


def test_an_unknown_visitor_stays_anonymous(tracker: Tracker, receiver: Receiver) -> None:
    with freeze_time(datetime(2026, 11, 26, 9, tzinfo=UTC)) as clock:
        tracker.identify("v-1", "ann@example.com")
        tracker.product_viewed(visitor_id="v-2", item=Item(name="Lamp", price=10))
        clock.tick(timedelta(hours=1))
        result = tracker.scan()
    assert (result.abandoned, result.suppressed) == (0, 1)

"""Answers no platform should give still settle every row, each on its own.

A ``Retry-After`` of twenty digits, of thirteen, of superscript digits, or a date in the year
9999; a 403 for one event while the key is good; a stored body that can no longer be sent.
Each row ends in a state of its own; none stays ``in_flight``, none takes another down.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.tables import outbox
from shop_events.testing import Receiver, Reply
from sqlalchemy import update

from tests.support import SettingsFactory, add_events, outbox_rows

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen  # type: ignore[misc]


def event(event_id: str) -> Callable[[Any], bool]:
    """Matches the body of the test event with this ``event_id``."""

    def match(body: Any) -> bool:
        return isinstance(body, dict) and Receiver.params(body).get("event_id") == event_id

    return match


def by_event(rows: list[Any]) -> dict[str, Any]:
    return {Receiver.params(json.loads(r.body))["event_id"]: r for r in rows}


def test_absurd_retry_after_values_settle_every_row_on_its_own(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(delivery={"threads": 2, "backoff_max": "1h"}))
    tracker.migrate()
    add_events(tracker, 6)
    huge = "99999999999999999999"
    receiver.rule(event("event-0"), Reply(200, "", headers={"Retry-After": huge}))
    receiver.rule(event("event-1"), Reply(429, "slow", headers={"Retry-After": "9999999999999"}))
    receiver.rule(event("event-2"), Reply(429, "slow", headers={"Retry-After": "²"}))
    far = "Fri, 31 Dec 9999 23:59:59 GMT"
    receiver.rule(event("event-3"), Reply(503, "later", headers={"Retry-After": far}))
    receiver.rule(event("event-4"), Reply(429, "slow", headers={"Retry-After": "7200"}))

    result = tracker.dispatch()
    rows = by_event(outbox_rows(tracker.engine))
    tracker.shutdown()
    tracker.engine.dispose()

    assert OutboxStatus.IN_FLIGHT.value not in {r.status for r in rows.values()}
    assert len(receiver.requests) == 6  # one each: nothing was sent again
    assert (rows["event-0"].status, rows["event-0"].attempts) == ("sent", 1)
    assert rows["event-5"].status == "sent"
    # asked to wait longer than the event may live: dead now, saying why
    for name in ("event-1", "event-3"):
        assert rows[name].status == "dead"
        assert "Retry-After" in rows[name].last_error
        assert "give_up_after" in rows[name].last_error
    # unreadable: the normal backoff
    assert rows["event-2"].status == "pending"
    assert rows["event-2"].next_attempt_at - START <= timedelta(seconds=30)
    # two hours asked, one hour at most (delivery.backoff_max)
    assert rows["event-4"].status == "pending"
    assert rows["event-4"].next_attempt_at - START == timedelta(hours=1)
    assert (result.sent, result.dead, result.retried) == (2, 2, 2)


def test_a_403_for_one_event_with_a_good_key_dead_letters_that_event_only(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(delivery={"threads": 1}))
    tracker.migrate()
    add_events(tracker, 5)
    refusal = "Forbidden: this contact belongs to another organisation"
    receiver.rule(event("event-0"), Reply(403, refusal))

    passes = [tracker.dispatch()]
    add_events(tracker, 3, prefix="later")
    for _ in range(3):  # the pause's length apart: nothing may wait on the refused event
        clock.tick(timedelta(minutes=5, seconds=1))
        passes.append(tracker.dispatch())
    rows = by_event(outbox_rows(tracker.engine))
    health = tracker.health()
    tracker.shutdown()
    tracker.engine.dispose()

    assert rows["event-0"].status == "dead"
    assert refusal in rows["event-0"].last_error
    assert rows["event-0"].response_status == 403
    assert {rows[f"event-{i}"].status for i in range(1, 5)} == {"sent"}
    assert {rows[f"later-{i}"].status for i in range(3)} == {"sent"}
    assert passes[0].sent == 4 and passes[0].dead == 1
    assert passes[1].sent == 3
    assert sum(r.status == 403 for r in receiver.requests) == 1
    assert not health.paused
    checks = [r for r in receiver.requests if r.path == "/api/v1/account/info"]
    assert [r.status for r in checks] == [200]


def test_an_orders_api_row_that_cannot_be_built_is_dead_and_the_rest_of_the_batch_goes(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(orders={"api": True}))
    tracker.migrate()
    for i in range(3):
        tracker.order_placed(
            f"order-{i}",
            email=f"buyer-{i}@example.com",
            items=[Item(name="Product", price="10", url="https://shop.example/p/1")],
        )
    with tracker.engine.begin() as conn:  # a stored body damaged since it was queued
        conn.execute(
            update(outbox)
            .where(outbox.c.api_path == "v1/orders", outbox.c.dedupe_key.contains("order-1"))
            .values(body='{"externalOrderId": "order-1", "total": ')
        )

    tracker.dispatch()
    rows = outbox_rows(tracker.engine)
    tracker.shutdown()
    tracker.engine.dispose()

    orders = [r for r in rows if r.api_path == "v1/orders"]
    broken = [r for r in orders if "order-1" in r.dedupe_key]
    assert len(orders) == 3 and len(broken) == 1
    assert broken[0].status == "dead"
    assert "cannot be sent" in broken[0].last_error
    assert broken[0].attempts == 0
    assert {r.status for r in orders if r not in broken} == {"sent"}
    assert sorted(o["externalOrderId"] for o in receiver.orders) == ["order-0", "order-2"]
    assert {r.status for r in rows if r.api_path != "v1/orders"} == {"sent"}

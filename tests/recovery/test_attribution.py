"""Attribution: an order within the window after a delivered reminder of its contact or cart is
recovered, once, credited to the last reminder, and clicked when a link of its sequence was
opened before it. The clock is frozen and moved; the receiver is a real HTTP server."""

from __future__ import annotations

import functools
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.payload.links import BadLink
from shop_events.recovery.links import open_link
from shop_events.storage.tables import recoveries, reminders
from shop_events.testing import Receiver
from sqlalchemy import select

from tests.support import RECOVERY_START as START
from tests.support import TrackerFactory, link_token, scan_and_dispatch

ANN = "ann@example.com"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SECRET = "a-test-secret-of-32-characters!!"
RECOVERY = {"links": True, "base_url": "https://shop.example", "secret": SECRET}


@pytest.fixture
def make_tracker(make_tracker: TrackerFactory) -> TrackerFactory:
    """The recovery tests' trackers with the links on (:data:`RECOVERY`), unless a test names
    its own ``recovery`` section."""
    return functools.partial(make_tracker, recovery=RECOVERY)


def cart(tracker: Tracker, cart_id: str = "cart-1", email: str = ANN, price: int = 40) -> None:
    tracker.cart_updated(
        cart_id,
        email=email,
        items=[Item(name="Lamp", price=price)],
        currency="EUR",
        restore_url=f"https://shop.example/cart/{cart_id}",
    )


def order(tracker: Tracker, order_id: str, email: str = ANN, **extra: Any) -> None:
    tracker.order_placed(
        order_id, email=email, items=[Item(name="Lamp", price=40)], currency="EUR", **extra
    )


def reminder_delivered(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> dict[str, Any]:
    """Ann's cart left alone for an hour: its reminder is delivered, and returned."""
    cart(tracker)
    clock.tick(HOUR)
    assert scan_and_dispatch(tracker) == 1
    [event] = receiver.events
    return event


def credited(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(recoveries).order_by(recoveries.c.ordered_at)))


def test_an_order_after_a_click_is_recovered_and_clicked(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    event = reminder_delivered(tracker, receiver, clock)
    clock.tick(HOUR)
    opened = open_link(tracker.engine, tracker.settings, link_token(event), tracker.clock())
    assert opened.cart_id == "cart-1"
    assert [i["name"] for i in opened.items] == ["Lamp"]
    assert opened.target.startswith("https://shop.example/cart/cart-1?utm_source=shop-events")
    assert "utm_content=step-1" in opened.target
    clock.tick(HOUR)
    order(tracker, "order-1", total="38.50")

    [row] = credited(tracker)
    assert (row.order_id, row.flow, row.step, row.clicked) == ("order-1", "cart", 1, True)
    assert (Decimal(row.revenue), row.currency) == (Decimal("38.50"), "EUR")
    assert row.reminded_at == START + HOUR
    report = tracker.recovery_report(since=START, until=START + DAY)
    flow = report.cart
    assert (flow.abandoned, flow.clicks, flow.recovered_orders) == (1, 1, 1)
    assert flow.recovered_revenue == {"EUR": Decimal("38.50")}
    assert flow.recovery_rate == 1.0


def test_an_order_without_a_reminder_is_not_recovered(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    cart(tracker)
    clock.tick(HOUR / 2)  # before the reminder came due
    order(tracker, "order-1", cart_id="cart-1")
    clock.tick(2 * HOUR)
    assert scan_and_dispatch(tracker) == 1  # the order's own event; no reminder followed
    assert credited(tracker) == []
    assert tracker.recovery_report(since=START, until=START + DAY).cart.recovered_orders == 0


def test_a_reminder_queued_but_not_delivered_recovers_nothing(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    cart(tracker)
    clock.tick(HOUR)
    assert tracker.scan().abandoned == 1  # queued, never sent
    order(tracker, "order-1")
    assert credited(tracker) == []


def test_an_order_after_the_window_is_not_recovered_and_one_inside_it_is(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(recovery={**RECOVERY, "attribution_window": "7d"})
    cart(tracker, "cart-1", "ann@example.com")
    cart(tracker, "cart-2", "bob@example.com")
    clock.tick(HOUR)
    assert scan_and_dispatch(tracker) == 2
    clock.tick(7 * DAY)  # exactly the window after ann's and bob's reminders
    order(tracker, "order-ann", email="ann@example.com")
    clock.tick(timedelta(seconds=1))
    order(tracker, "order-bob", email="bob@example.com")
    assert [r.order_id for r in credited(tracker)] == ["order-ann"]


def test_an_order_is_credited_once_to_the_last_reminder_delivered(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart={"steps": ["1h", "24h"]})
    cart(tracker)
    clock.tick(HOUR)
    assert scan_and_dispatch(tracker) == 1
    clock.tick(23 * HOUR)
    assert scan_and_dispatch(tracker) == 1
    clock.tick(HOUR)
    order(tracker, "order-1")
    order(tracker, "order-1")  # the shop reports the same order twice
    [row] = credited(tracker)
    assert (row.step, row.clicked) == (2, False)
    report = tracker.recovery_report(since=START, until=START + 3 * DAY)
    assert report.cart.recovered_by_step == {2: 1}
    assert report.cart.reminders_delivered == {1: 1, 2: 1}


def test_the_same_cart_under_another_address_is_recovered_by_its_cart_id(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    cart(tracker, "cart-7", "ann@example.com")
    clock.tick(HOUR)
    assert scan_and_dispatch(tracker) == 1
    clock.tick(HOUR)
    order(tracker, "order-1", email="ann.work@example.com", cart_id="cart-7")
    [row] = credited(tracker)
    assert (row.order_id, row.cart_id, row.email) == ("order-1", "cart-7", "ann.work@example.com")


def test_a_click_after_the_order_does_not_make_it_clicked(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    event = reminder_delivered(tracker, receiver, clock)
    clock.tick(HOUR)
    order(tracker, "order-1")
    clock.tick(HOUR)
    open_link(tracker.engine, tracker.settings, link_token(event), tracker.clock())
    [row] = credited(tracker)
    assert row.clicked is False


def test_a_link_opened_several_times_is_one_click(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    event = reminder_delivered(tracker, receiver, clock)
    for _ in range(3):
        clock.tick(HOUR)
        open_link(tracker.engine, tracker.settings, link_token(event), tracker.clock())
    with tracker.engine.connect() as conn:
        row = conn.execute(select(reminders)).one()
    assert (row.clicks, row.first_click_at) == (3, START + 2 * HOUR)
    assert tracker.recovery_report(since=START, until=START + DAY).cart.clicks == 1


def test_a_tampered_expired_or_foreign_link_is_refused_and_counts_nothing(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(recovery={**RECOVERY, "link_ttl": "2d"})
    token = link_token(reminder_delivered(tracker, receiver, clock))
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    foreign = tracker.settings.override(recovery={"secret": "another-secret-32-characters!!!!"})
    for bad, settings in ((tampered, tracker.settings), (token, foreign)):
        with pytest.raises(BadLink):
            open_link(tracker.engine, settings, bad, tracker.clock())
    clock.tick(2 * DAY)
    with pytest.raises(BadLink, match="expired"):
        open_link(tracker.engine, tracker.settings, token, tracker.clock())
    with tracker.engine.connect() as conn:
        assert conn.execute(select(reminders.c.clicks)).scalar_one() == 0

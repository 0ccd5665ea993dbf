"""Erasure on request: ``tracker.forget`` deletes every row about an address from every table,
in one transaction, counts them per table, supersedes what was queued, leaves everyone else
alone and suppresses marketing to the address until it opts in again.

Runs on SQLite, PostgreSQL and MariaDB; time moves with freezegun; the receiver is real.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker, ValidationError
from shop_events.delivery.dispatcher import DispatchResult
from shop_events.storage import capture_errors, kept_captures, pause
from shop_events.storage.capture_errors import CaptureError
from shop_events.storage.tables import carts, metadata
from shop_events.testing import Receiver
from sqlalchemy import String, func, select

from tests.support import (
    TrackerFactory,
    held_everywhere,
    outbox_rows,
    queue_pending,
)

ANN = "ann@example.com"
BOB = "bob@example.com"
HOUR = timedelta(hours=1)
LAMP = Item(name="Lamp", price="30")


def mentions(tracker: Tracker, text: str) -> list[str]:
    """``table.column`` of every text column of every plugin table holding ``text`` in some
    row, in any case."""
    found = []
    with tracker.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(column.type, String):
                    continue
                query = select(func.count()).where(func.lower(column).contains(text.lower()))
                if conn.execute(query.select_from(table)).scalar_one():
                    found.append(f"{table.name}.{column.name}")
    return found


def quoting_errors_and_state(tracker: Tracker, email: str) -> None:
    """A failed capture, a capture kept to be tried again and a delivery pause whose texts
    quote ``email``."""
    now = tracker.clock()
    error = f"email: {email.upper()} is not allowed here"
    with tracker.engine.begin() as conn:
        capture_errors.record(
            conn, [CaptureError("customer", "email", 3, now, now, f"the customer {email}", error)]
        )
        kept_captures.keep(
            conn,
            mapping="order",
            model="shop_order",
            subject_key='{"id": 7}',
            subject="the order 7",
            field="email",
            error=error,
            now=now,
        )
        pause.pause(conn, f"HTTP 401: key refused for {email}", now, now + HOUR)


def without_time(document: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in document.items() if name != "exported_at"}


def test_every_row_about_the_person_is_deleted_and_counted_per_table_and_others_stay(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    held_everywhere(tracker, receiver, clock, ANN, "a")
    held_everywhere(tracker, receiver, clock, BOB, "b")
    queue_pending(tracker, ANN)
    queue_pending(tracker, BOB)
    quoting_errors_and_state(tracker, ANN)
    bob_before = without_time(tracker.export(BOB))
    statuses = {event["status"] for event in tracker.export(ANN)["events"]}
    assert statuses == {"sent", "dead", "pending"}
    assert len(mentions(tracker, ANN)) > 10
    forgotten = tracker.forget(ANN)
    assert forgotten == {
        "shop_events_carts": 2,
        "shop_events_browses": 1,
        "shop_events_registrations": 1,
        "shop_events_orders": 1,
        "shop_events_visitors": 1,
        "shop_events_reminders": 1,
        "shop_events_recoveries": 1,
        "shop_events_caps": 1,
        "shop_events_consent": 1,
        "shop_events_consent_history": 2,
        "shop_events_kept_captures": 1,
        "shop_events_capture_errors": 1,
        "shop_events_state": 1,
        "shop_events_outbox": 9,
    }
    assert forgotten.complete
    assert not forgotten.platform_erasure
    assert mentions(tracker, ANN) == []
    assert without_time(tracker.export(BOB)) == bob_before
    with tracker.engine.connect() as conn:
        [error] = capture_errors.newest(conn, 10)
        assert (error.count, error.last_error) == (3, "email: [erased] is not allowed here")
        current = pause.current(conn)
    assert current is not None and current.reason == "HTTP 401: key refused for [erased]"


def test_case_and_surrounding_spaces_of_the_address_do_not_matter(
    make_tracker: TrackerFactory,
) -> None:
    tracker = make_tracker()
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP])
    tracker.logged_in(ANN)
    assert tracker.export("  Ann@EXAMPLE.com\t")["activity"]["carts"][0]["cart_id"] == "cart-1"
    forgotten = tracker.forget(" ANN@Example.COM \n")
    assert (forgotten["shop_events_carts"], forgotten["shop_events_outbox"]) == (1, 1)
    assert mentions(tracker, ANN) == []


def test_a_bad_address_is_refused_naming_the_field_and_nothing_is_deleted(
    make_tracker: TrackerFactory,
) -> None:
    tracker = make_tracker()
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP])
    for bad in ("not an address", "", 42):
        with pytest.raises(ValidationError) as raised:
            tracker.forget(bad)  # type: ignore[arg-type]
        assert raised.value.field == "email"
    assert mentions(tracker, ANN) == ["shop_events_carts.email"]


def test_an_unknown_address_deletes_nothing(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker()
    tracker.cart_updated("cart-1", email=BOB, items=[LAMP])
    forgotten = tracker.forget(ANN)
    assert set(forgotten.values()) == {0}
    assert mentions(tracker, BOB) != []


def test_queued_events_are_superseded_by_deletion_and_a_send_in_flight_records_nothing(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.logged_in(ANN)
    receiver.hold()
    passes: list[DispatchResult] = []
    sender = threading.Thread(target=lambda: passes.append(tracker.dispatch()))
    sender.start()
    try:
        assert receiver.wait_for_arrivals(1)
        tracker.logged_in(ANN)  # queued behind the one in flight
        assert [row.status for row in outbox_rows(tracker.engine)] == ["in_flight", "pending"]
        assert tracker.forget(ANN)["shop_events_outbox"] == 2
    finally:
        receiver.release()
        sender.join(timeout=30)
    [result] = passes
    assert (result.sent, result.lost_lease) == (0, 1)
    assert len(receiver.events) == 1  # it had reached the platform
    assert outbox_rows(tracker.engine) == []
    assert tracker.dispatch().claimed == 0


def test_a_forgotten_address_gets_no_marketing_until_it_opts_in_again(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.forget(ANN)
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP])
    tracker.logged_in(ANN)
    clock.tick(HOUR)
    tracker.scan()
    tracker.dispatch()
    assert [event["eventTypeKey"] for event in receiver.events] == ["login"]
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts.c.state, carts.c.skip_reason)).one()
    assert tuple(row) == ("suppressed", "opted_out")
    tracker.opted_in(ANN, source="checkout checkbox", basis="consent")
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP, Item(name="Shade", price="9")])
    clock.tick(HOUR)
    tracker.scan()
    tracker.dispatch()
    assert [event["eventTypeKey"] for event in receiver.events] == ["login", "abandoned_cart"]


def test_without_suppression_a_forgotten_address_is_reminded_like_a_new_one(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(privacy={"suppress_after_forget": False})
    tracker.opted_out(ANN)
    tracker.forget(ANN)
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP])
    clock.tick(HOUR)
    tracker.scan()
    tracker.dispatch()
    assert [event["eventTypeKey"] for event in receiver.events] == ["abandoned_cart"]

"""Every flow end to end: the exact body the receiver got, the timing edges, the cancelling paths.

Time moves with freezegun; the receiver is a real HTTP server on 127.0.0.1. Bodies are compared
field by field, with the nested JSON strings (``items``, ``json``) parsed too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Settings, Tracker, ValidationError
from shop_events.errors import ConfigError
from shop_events.storage.tables import browses, carts, orders, outbox, registrations
from shop_events.testing import Receiver
from sqlalchemy import func, select

from tests.support import SettingsFactory

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
ANN = "ann@example.com"
SHOP = "https://shop.example"
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)


def product(n: int, **extra: Any) -> Item:
    return Item(
        name=f"Product {n}",
        price=f"{n}0.50",
        url=f"{SHOP}/p/{n}",
        imageurl=f"{SHOP}/i/{n}.jpg",
        brand="Le Petit Olivier",
        sku=f"SKU-{n}",
        tags={"weight": str(100 * n)},
        **extra,
    )


def sent_item(n: int, **extra: str) -> dict[str, str]:
    """A product as the ``items`` param carries it, in the API's field order."""
    return {
        "name": f"Product {n}",
        "price": f"{n}0.50",
        "url": f"{SHOP}/p/{n}",
        "imageurl": f"{SHOP}/i/{n}.jpg",
        "brand": "Le Petit Olivier",
        **extra,
        "sku": f"SKU-{n}",
        "tags_weight": str(100 * n),
    }


NESTED = {"items", "json"}


def decoded(event: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    """The event with its params as ``[(name, value)]``, nested JSON strings parsed.

    In v1 every value must be a string (nested JSON serialized); in v2 nested values are JSON.
    """
    params = []
    for param in event["params"]:
        assert set(param) == {"name", "value"}
        name, value = param["name"], param["value"]
        if version == "v1":
            assert isinstance(value, str), (name, value)
            if name in NESTED:
                value = json.loads(value)
        else:
            assert isinstance(value, str) or name in NESTED, (name, value)
        params.append((name, value))
    assert set(event) == {"eventTypeKey", "keyValue", "params"}
    return {"eventTypeKey": event["eventTypeKey"], "keyValue": event["keyValue"], "params": params}


STEP_1 = ("step", "1")
"""The param every reminder of a one-step flow ends with."""


def expected(key: str, email: str, *params: tuple[str, Any]) -> dict[str, Any]:
    return {"eventTypeKey": key, "keyValue": email, "params": list(params)}


def items_of(*numbers: int) -> tuple[str, dict[str, Any]]:
    return ("items", {"array": [sent_item(n) for n in numbers]})


def outbox_rows(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


def statuses(tracker: Tracker) -> dict[str, str]:
    """Outbox status by event type key (one row of each type in these tests)."""
    rows = outbox_rows(tracker)
    assert len({r.event_type_key for r in rows}) == len(rows), [r.dedupe_key for r in rows]
    return {r.event_type_key: r.status for r in rows}


def row_of(tracker: Tracker, table: Any, **where: Any) -> Any:
    with tracker.engine.connect() as conn:
        query = select(table).where(*(table.c[k] == v for k, v in where.items()))
        return conn.execute(query).one()


def count(tracker: Tracker, table: Any) -> int:
    with tracker.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def types_sent(receiver: Receiver) -> list[str]:
    return [e["eventTypeKey"] for e in receiver.events]


def assert_exact_bytes(tracker: Tracker, receiver: Receiver) -> None:
    """What went over the wire is the stored body, byte for byte."""
    stored = sorted(r.body.encode() for r in outbox_rows(tracker) if r.status == "sent")
    received = sorted(q.raw for q in receiver.requests if q.status == 200)
    assert stored == received


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


TrackerFactory = Callable[..., Tracker]


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    """Migrated trackers on the test database with some settings changed."""
    made: list[Tracker] = []

    def make(**sections: dict[str, Any]) -> Tracker:
        tracker = Tracker(make_settings(**sections))
        tracker.migrate()
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.shutdown()
        tracker.engine.dispose()


# ------------------------------------------------------------------------ abandoned browse


def test_browse_collapses_repeats_most_recent_first_capped_and_sent_at_the_timeout(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_browse={"max_items": 3})
    for n in (1, 2, 1, 3, 4):  # 1 is seen twice; 2 falls off the end (at most 3)
        tracker.product_viewed(email="Ann@Example.com", item=product(n))
        clock.tick(timedelta(minutes=1))
    clock.tick(HOUR - timedelta(minutes=1) - SECOND)  # one second before: last view + 1h - 1s
    assert tracker.scan().abandoned == 0
    tracker.dispatch()
    assert receiver.requests == []

    clock.tick(SECOND)
    result = tracker.scan()
    assert (result.abandoned, result.by_flow) == (1, {"browse": 1})
    assert tracker.dispatch().sent == 1
    assert tracker.scan().abandoned == 0 and tracker.dispatch().claimed == 0

    [request] = receiver.requests
    assert request.path == "/api/v1/event"
    [event] = receiver.events
    assert decoded(event) == expected(
        "abandoned_browse", ANN, ("email", ANN), items_of(4, 3, 1), STEP_1
    )
    # the field order inside an item is the cart format's (the seed's)
    assert list(Receiver.items(event)[0]) == list(sent_item(4))
    [row] = outbox_rows(tracker)
    assert (row.dedupe_key, row.status) == (f"abandoned_browse:e:{ANN}:1:1", "sent")
    assert_exact_bytes(tracker, receiver)


def test_every_view_restarts_the_browse_timer(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.product_viewed(email=ANN, item=product(1))
    clock.tick(timedelta(minutes=59))
    tracker.product_viewed(email=ANN, item=product(2))
    clock.tick(HOUR - SECOND)
    assert tracker.scan().abandoned == 0
    clock.tick(SECOND)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    [event] = receiver.events
    assert decoded(event)["params"] == [("email", ANN), items_of(2, 1), STEP_1]


def test_browse_items_are_real_json_in_v2(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(api={"version": "v2"})
    tracker.product_viewed(email=ANN, item=product(1, quantity=2))
    clock.tick(HOUR)
    tracker.scan()
    tracker.dispatch()
    [request] = receiver.requests
    assert request.path == "/api/v2/event"
    assert decoded(receiver.events[0], "v2")["params"] == [
        ("email", ANN),
        ("items", {"array": [sent_item(1, quantity="2")]}),
        STEP_1,
    ]


@pytest.mark.parametrize("by", ["email", "visitor_id"])
def test_adding_to_the_cart_cancels_the_browse_at_scan(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, by: str
) -> None:
    tracker.product_viewed(email=ANN, visitor_id="v-1", item=product(1))
    clock.tick(timedelta(minutes=10))
    owner = {"email": ANN} if by == "email" else {"visitor_id": "v-1"}
    tracker.cart_updated("cart-1", items=[product(1)], **owner)
    clock.tick(HOUR)
    result = tracker.scan()
    assert result.converted == 1
    assert result.by_flow.get("browse") is None
    tracker.dispatch()
    assert "abandoned_browse" not in types_sent(receiver)
    assert row_of(tracker, browses, browse_key=f"e:{ANN}").state == "converted"


@pytest.mark.parametrize("by", ["email", "visitor_id"])
def test_adding_to_the_cart_after_the_browse_was_queued_supersedes_it(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, by: str
) -> None:
    tracker.product_viewed(email=ANN, visitor_id="v-1", item=product(1))
    clock.tick(HOUR)
    assert tracker.scan().by_flow == {"browse": 1}
    owner = {"email": ANN} if by == "email" else {"visitor_id": "v-1"}
    tracker.cart_updated("cart-1", items=[product(1)], **owner)
    result = tracker.dispatch()
    assert (result.superseded, result.sent) == (1, 0)
    assert receiver.requests == []
    [row] = outbox_rows(tracker)
    assert (row.status, row.last_error) == ("superseded", "the shopper added to the cart")


def test_a_cart_from_before_the_browse_does_not_cancel_it(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated("cart-1", email=ANN, items=[product(1)])
    clock.tick(timedelta(minutes=1))
    tracker.product_viewed(email=ANN, item=product(2))
    clock.tick(HOUR)
    assert tracker.scan().by_flow == {"cart": 1, "browse": 1}
    tracker.dispatch()
    assert sorted(types_sent(receiver)) == ["abandoned_browse", "abandoned_cart"]


@pytest.mark.parametrize("when", ["before the scan", "after the event was queued"])
def test_an_order_cancels_the_browse(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, when: str
) -> None:
    tracker.product_viewed(email=ANN, item=product(1))
    clock.tick(HOUR)
    if when == "after the event was queued":
        assert tracker.scan().abandoned == 1
    tracker.order_placed("order-1", email=ANN, items=[product(1)])
    clock.tick(HOUR)
    assert tracker.scan().abandoned == 0
    tracker.dispatch()
    assert types_sent(receiver) == ["orderCreated"]
    assert row_of(tracker, browses, browse_key=f"e:{ANN}").state == "converted"
    if when == "after the event was queued":
        assert statuses(tracker)["abandoned_browse"] == "superseded"


def test_anonymous_views_follow_the_shopper_on_identify(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.product_viewed(visitor_id="v-1", item=product(1))
    clock.tick(timedelta(minutes=1))
    tracker.product_viewed(visitor_id="v-1", item=product(2))
    clock.tick(timedelta(minutes=1))
    tracker.product_viewed(email=ANN, item=product(3))  # the same shopper, signed in elsewhere
    clock.tick(timedelta(minutes=1))
    tracker.identify("v-1", ANN)
    assert count(tracker, browses) == 1
    merged = row_of(tracker, browses, browse_key=f"e:{ANN}")
    assert (merged.email, merged.visitor_id) == (ANN, "v-1")

    clock.tick(HOUR - timedelta(minutes=1) - SECOND)  # the last view was at +2m
    assert tracker.scan().abandoned == 0
    clock.tick(SECOND)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    [event] = receiver.events
    assert decoded(event) == expected(
        "abandoned_browse", ANN, ("email", ANN), items_of(3, 2, 1), STEP_1
    )


def test_anonymous_browse_identified_after_its_timeout_is_sent_at_the_next_scan(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.product_viewed(visitor_id="v-1", item=product(1))
    clock.tick(HOUR)
    result = tracker.scan()
    assert (result.abandoned, result.suppressed) == (0, 1)  # nobody to send it to yet
    assert row_of(tracker, browses, browse_key="v:v-1").skip_reason == "no_contact"
    clock.tick(timedelta(minutes=5))
    tracker.identify(visitor_id="v-1", email=ANN)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    [event] = receiver.events
    assert decoded(event) == expected("abandoned_browse", ANN, ("email", ANN), items_of(1), STEP_1)


def test_a_view_carrying_both_ids_links_the_visitor(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.product_viewed(visitor_id="v-1", item=product(1))
    clock.tick(timedelta(minutes=1))
    tracker.product_viewed(email=ANN, visitor_id="v-1", item=product(2))
    assert count(tracker, browses) == 1
    clock.tick(HOUR)
    tracker.scan()
    tracker.dispatch()
    [event] = receiver.events
    assert decoded(event)["params"] == [("email", ANN), items_of(2, 1), STEP_1]


def test_a_cart_carrying_both_ids_links_the_visitor_and_cancels_the_browse(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.product_viewed(visitor_id="v-1", item=product(1))
    clock.tick(timedelta(minutes=1))
    tracker.cart_updated("cart-1", email=ANN, visitor_id="v-1", items=[product(1)])
    browse = row_of(tracker, browses, browse_key=f"e:{ANN}")  # the views followed the email
    assert (browse.email, json.loads(browse.items)[0]["name"]) == (ANN, "Product 1")
    assert count(tracker, browses) == 1
    clock.tick(HOUR)
    assert tracker.scan().by_flow == {"cart": 1}
    tracker.dispatch()
    assert types_sent(receiver) == ["abandoned_cart"]


def test_anonymous_cart_gets_its_contact_on_identify(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated("cart-1", visitor_id="v-1", items=[product(1)])
    clock.tick(HOUR)
    assert tracker.scan().suppressed == 1
    tracker.identify("v-1", ANN)
    assert tracker.scan().by_flow == {"cart": 1}
    tracker.dispatch()
    [event] = receiver.events
    assert (event["eventTypeKey"], event["keyValue"]) == ("abandoned_cart", ANN)


def test_a_new_view_after_a_browse_reminder_is_a_new_version(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_browse={"contact_interval": "0s"})
    tracker.product_viewed(email=ANN, item=product(1))
    clock.tick(HOUR)
    tracker.scan()
    tracker.dispatch()
    clock.tick(timedelta(minutes=5))
    tracker.product_viewed(email=ANN, item=product(2))
    clock.tick(HOUR - SECOND)
    assert tracker.scan().abandoned == 0
    clock.tick(SECOND)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert [decoded(e)["params"] for e in receiver.events] == [
        [("email", ANN), items_of(1), STEP_1],
        [("email", ANN), items_of(2), STEP_1],  # a new browse: only what was seen since
    ]
    assert [r.dedupe_key for r in outbox_rows(tracker)] == [
        f"abandoned_browse:e:{ANN}:1:1",
        f"abandoned_browse:e:{ANN}:2:1",
    ]


LONGEST_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"


def test_the_longest_valid_email_gets_its_browse_reminder(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    assert len(LONGEST_EMAIL) == 254
    tracker.product_viewed(email=LONGEST_EMAIL, item=product(1))
    clock.tick(HOUR)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert [e["keyValue"] for e in receiver.events] == [LONGEST_EMAIL]


# ------------------------------------------------------------------ unfinished registration


def test_unfinished_registration_is_sent_once_at_the_timeout_with_its_params(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.registration_started(ANN, params={"source": "checkout", "first_name": "Ann"})
    clock.tick(DAY - SECOND)
    assert tracker.scan().abandoned == 0
    tracker.dispatch()
    assert receiver.requests == []
    clock.tick(SECOND)
    assert tracker.scan().by_flow == {"registration": 1}
    assert tracker.dispatch().sent == 1
    assert tracker.scan().abandoned == 0
    [event] = receiver.events
    assert decoded(event) == expected(
        "unfinished_registration",
        ANN,
        ("email", ANN),
        ("source", "checkout"),
        ("first_name", "Ann"),
        STEP_1,
    )
    [row] = outbox_rows(tracker)
    assert row.dedupe_key == f"unfinished_registration:{ANN}:1:1"
    assert_exact_bytes(tracker, receiver)


@pytest.mark.parametrize("when", ["before the scan", "after the event was queued"])
def test_completed_registration_cancels_the_reminder(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, when: str
) -> None:
    tracker.registration_started(ANN, params={"source": "checkout"})
    clock.tick(DAY)
    if when == "after the event was queued":
        assert tracker.scan().abandoned == 1
    tracker.registration_completed("ANN@example.com")
    clock.tick(DAY)
    assert tracker.scan().abandoned == 0
    result = tracker.dispatch()
    assert receiver.requests == []
    assert row_of(tracker, registrations, email=ANN).state == "completed"
    if when == "after the event was queued":
        assert result.superseded == 1
        [row] = outbox_rows(tracker)
        assert (row.status, row.last_error) == ("superseded", "the registration was completed")
    else:
        assert outbox_rows(tracker) == []


# ---------------------------------------------------------------------------------- orders


def place(tracker: Tracker, order_id: str = "order-9", email: str = ANN, **extra: Any) -> None:
    tracker.order_placed(
        order_id,
        email=email,
        items=[product(1), product(2, quantity=2)],
        total="682",
        currency="EUR",
        **extra,
    )


ORDER_ITEMS = ("items", {"array": [sent_item(1), sent_item(2, quantity="2")]})


def test_order_placed_is_sent_at_once_as_order_created(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    place(tracker, email="Ann@Example.com")
    assert tracker.dispatch().sent == 1  # no scan, no waiting
    [request] = receiver.requests
    assert request.path == "/api/v1/event"
    assert decoded(receiver.events[0]) == expected(
        "orderCreated",
        ANN,
        ("email", ANN),
        ORDER_ITEMS,
        ("order_id", "order-9"),
        ("status", "INITIALIZED"),
        ("total", "682"),
        ("currency", "EUR"),
    )
    assert_exact_bytes(tracker, receiver)


def test_order_total_defaults_to_the_items_sum(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.order_placed("order-1", email=ANN, items=[product(1), product(2, quantity=2)])
    tracker.dispatch()
    assert Receiver.params(receiver.events[0])["total"] == "51.50"  # 10.50 + 2 × 20.50
    assert "currency" not in Receiver.params(receiver.events[0])


@pytest.mark.parametrize(
    ("status", "event_type", "sent_status"),
    [
        ("DELIVERED", "orderDelivered", "DELIVERED"),
        ("cancelled", "orderCancelled", "CANCELLED"),
        ("SHIPPED", "orderUpdated", "SHIPPED"),
    ],
)
def test_order_status_change_raises_the_mapped_event(
    tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    status: str,
    event_type: str,
    sent_status: str,
) -> None:
    place(tracker)
    assert tracker.dispatch().sent == 1
    clock.tick(DAY)
    tracker.order_status_changed("order-9", status=status)
    tracker.order_status_changed("order-9", status=status)  # the same change twice: one event
    assert tracker.dispatch().sent == 1
    assert types_sent(receiver) == ["orderCreated", event_type]
    assert decoded(receiver.events[1]) == expected(
        event_type,
        ANN,
        ("email", ANN),
        ORDER_ITEMS,
        ("order_id", "order-9"),
        ("status", sent_status),
        ("total", "682"),
        ("currency", "EUR"),
    )
    assert row_of(tracker, orders, order_id="order-9").status == sent_status


def test_status_events_mapping_is_configurable(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(orders={"status_events": {"SHIPPED": "orderShipped"}})
    place(tracker)
    tracker.order_status_changed("order-9", status="shipped")
    tracker.order_status_changed("order-9", status="DELIVERED")  # not mapped any more
    tracker.dispatch()
    sent = {e["eventTypeKey"]: Receiver.params(e)["status"] for e in receiver.events}
    assert sent == {
        "orderCreated": "INITIALIZED",
        "orderShipped": "SHIPPED",
        "orderUpdated": "DELIVERED",
    }


def test_statuses_are_matched_in_their_common_spellings(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker()
    for n, status in enumerate(["canceled", "Cancelled", "delivered", "in transit"]):
        place(tracker, f"order-{n}")
        tracker.order_status_changed(f"order-{n}", status=status)
    custom = make_tracker(orders={"status_events": {"in-transit": "orderShipped"}})
    place(custom, "order-9")
    custom.order_status_changed("order-9", status="In Transit")
    with tracker.engine.connect() as conn:
        found = conn.execute(
            select(outbox.c.subject_id, outbox.c.event_type_key)
            .where(outbox.c.event_type_key != "orderCreated")
            .order_by(outbox.c.id)
        ).all()
    assert [tuple(row) for row in found] == [
        ("order-0", "orderCancelled"),
        ("order-1", "orderCancelled"),
        ("order-2", "orderDelivered"),
        ("order-3", "orderUpdated"),
        ("order-9", "orderShipped"),
    ]


def test_two_spellings_of_one_status_must_raise_the_same_event() -> None:
    with pytest.raises(ConfigError, match=r"orders\.status_events\.canceled: the same status"):
        Settings.load({"orders": {"status_events": {"CANCELED": "a", "canceled": "b"}}})


def test_status_of_an_unknown_order_needs_an_email(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    with pytest.raises(ValidationError) as caught:
        tracker.order_status_changed("order-404", status="DELIVERED")
    assert caught.value.field == "order_id"
    assert "'order-404' is unknown" in caught.value.rule
    assert outbox_rows(tracker) == [] and count(tracker, orders) == 0

    tracker.order_status_changed("order-404", status="DELIVERED", email=ANN)
    tracker.dispatch()
    assert decoded(receiver.events[0]) == expected(
        "orderDelivered",
        ANN,
        ("email", ANN),
        ("items", {"array": []}),
        ("order_id", "order-404"),
        ("status", "DELIVERED"),
        ("total", "0"),
    )


def test_orders_api_gets_orders_batched_and_status_changes_resent(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(orders={"api": True})
    for n in (1, 2, 3):
        place(tracker, f"order-{n}", email=f"shopper{n}@example.com")
    assert tracker.dispatch().sent == 6  # three events and three orders …
    paths = sorted(q.path for q in receiver.requests)
    assert paths == ["/api/v1/event"] * 3 + ["/api/v1/orders"]  # … the orders in one request
    [orders_request] = [q for q in receiver.requests if q.path == "/api/v1/orders"]
    assert list(orders_request.json) == ["orders"]
    assert [o["externalOrderId"] for o in receiver.orders] == ["order-1", "order-2", "order-3"]
    assert receiver.orders[0] == {  # amounts and quantities are JSON numbers in this API
        "externalOrderId": "order-1",
        "externalCustomerId": "shopper1@example.com",
        "email": "shopper1@example.com",
        "status": "INITIALIZED",
        "totalCost": 682,
        "date": START.isoformat(timespec="seconds"),
        "currency": "EUR",
        "items": [
            {
                "externalItemId": "SKU-1",
                "name": "Product 1",
                "cost": 10.5,
                "quantity": 1,
                "url": f"{SHOP}/p/1",
                "imageUrl": f"{SHOP}/i/1.jpg",
            },
            {
                "externalItemId": "SKU-2",
                "name": "Product 2",
                "cost": 20.5,
                "quantity": 2,
                "url": f"{SHOP}/p/2",
                "imageUrl": f"{SHOP}/i/2.jpg",
            },
        ],
    }

    clock.tick(HOUR)
    tracker.order_status_changed("order-2", status="DELIVERED")
    assert tracker.dispatch().sent == 2
    resent = receiver.orders[3]  # the same id again: the platform updates the order
    assert (resent["externalOrderId"], resent["status"]) == ("order-2", "DELIVERED")
    assert {k: v for k, v in resent.items() if k != "status"} == {
        k: v for k, v in receiver.orders[1].items() if k != "status"
    }
    assert [q.path for q in receiver.requests[-2:]].count("/api/v1/orders") == 1
    assert {r.status for r in outbox_rows(tracker)} == {"sent"}


def test_orders_api_requests_hold_at_most_api_batch_orders(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(orders={"api": True, "api_batch": 2})
    for n in range(1, 6):
        place(tracker, f"order-{n}")
    assert tracker.dispatch().sent == 10
    sizes = [len(q.json["orders"]) for q in receiver.requests if q.path == "/api/v1/orders"]
    assert sorted(sizes) == [1, 2, 2]
    assert sorted(o["externalOrderId"] for o in receiver.orders) == [
        f"order-{n}" for n in range(1, 6)
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"total": "1e400"}, "total"),
        (
            {"items": [Item(name="A", price=1), Item(name="B", price="1e400")], "total": "2"},
            "items[1].price",
        ),
    ],
)
def test_orders_api_refuses_amounts_it_cannot_carry(
    make_tracker: TrackerFactory, kwargs: dict[str, Any], field: str
) -> None:
    tracker = make_tracker(orders={"api": True})
    order: dict[str, Any] = {"email": ANN, "items": [Item(name="A", price=1)], **kwargs}
    with pytest.raises(ValidationError) as caught:  # a JSON number that big is Infinity
        tracker.order_placed("order-1", **order)
    assert caught.value.field == field
    assert outbox_rows(tracker) == [] and count(tracker, orders) == 0


# ------------------------------------------------------------------- login and password


@pytest.mark.parametrize("opted_out", [False, True], ids=["opted-in", "opted-out"])
def test_login_and_password_events_are_immediate_and_transactional(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, opted_out: bool
) -> None:
    if opted_out:
        tracker.opted_out(ANN)
    reset = "https://shop.example/reset?token=abc123"
    tracker.logged_in("Ann@Example.com", params={"device": "ios"})
    tracker.password_changed(ANN)
    tracker.password_reset_requested(ANN, reset_url=reset)
    assert tracker.dispatch().sent == 3  # sent in parallel: compared in key order
    assert sorted((decoded(e) for e in receiver.events), key=lambda e: e["eventTypeKey"]) == [
        expected("login", ANN, ("email", ANN), ("device", "ios")),
        expected("password_change", ANN, ("email", ANN)),
        expected("password_reset", ANN, ("email", ANN), ("reset_url", reset)),
    ]
    assert_exact_bytes(tracker, receiver)


def test_password_reset_needs_a_real_url(tracker: Tracker) -> None:
    with pytest.raises(ValidationError) as caught:
        tracker.password_reset_requested(ANN, reset_url="/reset?token=abc")
    assert caught.value.field == "reset_url"
    assert outbox_rows(tracker) == []


# --------------------------------------------------------------------------------- contacts


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("created", "event_type"), [(True, "create_contact"), (False, "update_contact")]
)
def test_contact_upserted_sends_names_phone_and_profile_inputs(
    make_tracker: TrackerFactory,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    version: str,
    created: bool,
    event_type: str,
) -> None:
    tracker = make_tracker(api={"version": version}, contacts={"fields": {"10001": "date"}})
    tracker.contact_upserted(
        ANN,
        first_name="Ann",
        last_name="Lee",
        phone="+1-541-754-3010",
        fields={10001: "2020-11-23"},
        created=created,
    )
    assert tracker.dispatch().sent == 1
    [request] = receiver.requests
    assert request.path == f"/api/{version}/event"
    profile = {"profileInputs": [{"profileInputId": 10001, "value": "2020-11-23"}]}
    assert decoded(receiver.events[0], version) == expected(
        event_type,
        ANN,
        ("email", ANN),
        ("firstName", "Ann"),
        ("lastName", "Lee"),
        ("phone", "15417543010"),
        ("json", profile),
    )
    json_value = Receiver.params(receiver.events[0])["json"]
    if version == "v1":  # serialized exactly as the API document prints it
        assert json_value == '{"profileInputs":[{"profileInputId":10001,"value":"2020-11-23"}]}'
    else:
        assert json_value == profile
    assert_exact_bytes(tracker, receiver)


def test_contact_with_email_only_has_no_json_param(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.contact_upserted(ANN)
    tracker.dispatch()
    assert decoded(receiver.events[0]) == expected("update_contact", ANN, ("email", ANN))


# ---------------------------------------------------------------------------------- consent


def start_all_marketing(tracker: Tracker, clock: FrozenDateTimeFactory) -> None:
    """A registration, a cart, then a browse (after the cart, so the cart does not cancel it)."""
    tracker.registration_started(ANN, params={"source": "footer"})
    tracker.cart_updated("cart-1", email=ANN, items=[product(1)])
    clock.tick(timedelta(minutes=1))
    tracker.product_viewed(email=ANN, item=product(2))


def test_opted_out_contact_is_skipped_by_every_marketing_flow_at_scan(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    start_all_marketing(tracker, clock)
    tracker.opted_out("ANN@example.com")
    clock.tick(DAY)
    result = tracker.scan()
    assert (result.abandoned, result.suppressed) == (0, 3)
    tracker.dispatch()
    assert receiver.requests == []
    for table, key in (
        (carts, {"cart_id": "cart-1"}),
        (browses, {"browse_key": f"e:{ANN}"}),
        (registrations, {"email": ANN}),
    ):
        row = row_of(tracker, table, **key)
        assert (row.state, row.skip_reason) == ("suppressed", "opted_out"), table.name


def test_opting_out_supersedes_queued_marketing_events_only(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    start_all_marketing(tracker, clock)
    clock.tick(DAY)
    assert tracker.scan().by_flow == {"cart": 1, "browse": 1, "registration": 1}
    tracker.custom_event("wishlist_reminder", key_value=ANN, params={"n": 1}, marketing=True)
    tracker.custom_event("invoice_ready", key_value=ANN, params={"n": 2})
    tracker.logged_in(ANN)
    tracker.opted_out(ANN)
    assert tracker.dispatch().sent == 2
    assert sorted(types_sent(receiver)) == ["invoice_ready", "login"]
    assert statuses(tracker) == {
        "abandoned_cart": "superseded",
        "abandoned_browse": "superseded",
        "unfinished_registration": "superseded",
        "wishlist_reminder": "superseded",
        "invoice_ready": "sent",
        "login": "sent",
    }


def test_send_time_check_catches_an_opt_out_the_queue_missed(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated("cart-1", email=ANN, items=[product(1)])
    clock.tick(HOUR)
    tracker.scan()
    # as if the opt-out landed after the row was queued but its supersede missed it
    from shop_events.storage import consent

    with tracker.engine.begin() as conn:
        consent.record(conn, ANN, False, datetime.now(UTC))
    assert tracker.dispatch().superseded == 1
    assert receiver.requests == []
    [row] = outbox_rows(tracker)
    assert row.last_error == "the contact opted out of marketing"


def test_opting_in_again_restores_marketing(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.opted_out(ANN)
    tracker.cart_updated("cart-1", email=ANN, items=[product(1)])
    clock.tick(HOUR)
    assert tracker.scan().suppressed == 1
    tracker.opted_in(ANN)
    tracker.cart_updated("cart-1", email=ANN, items=[product(1), product(2)])
    tracker.registration_started(ANN)
    clock.tick(DAY)
    assert tracker.scan().by_flow == {"cart": 1, "registration": 1}
    tracker.dispatch()
    assert sorted(types_sent(receiver)) == ["abandoned_cart", "unfinished_registration"]


def test_opt_out_of_a_queued_reminder_does_not_use_up_the_cap(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated("cart-1", email=ANN, items=[product(1)])
    clock.tick(HOUR)
    tracker.scan()
    tracker.opted_out(ANN)  # the reminder is superseded unsent …
    tracker.opted_in(ANN)  # … and the shopper changes their mind
    tracker.cart_updated("cart-1", email=ANN, items=[product(1), product(2)])
    clock.tick(HOUR)
    assert tracker.scan().by_flow == {"cart": 1}  # not capped by a reminder never sent
    tracker.dispatch()
    assert types_sent(receiver) == ["abandoned_cart"]
    assert len(Receiver.items(receiver.events[0])) == 2


# ------------------------------------------------------------------------------------- bots

BOT_AGENTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
]
HUMAN = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15"
)


def every_capture_with_a_user_agent(tracker: Tracker, email: str, agent: str) -> None:
    tracker.cart_updated("cart-1", email=email, items=[product(1)], user_agent=agent)
    tracker.product_viewed(email=email, item=product(1), user_agent=agent)
    tracker.product_viewed(visitor_id="v-1", item=product(1), user_agent=agent)
    tracker.registration_started(email, user_agent=agent)
    tracker.order_placed("order-1", email=email, items=[product(1)], user_agent=agent)
    tracker.logged_in(email, user_agent=agent)


def activity(tracker: Tracker) -> dict[str, int]:
    return {t.name: count(tracker, t) for t in (carts, browses, registrations, orders, outbox)}


@pytest.mark.parametrize("agent", BOT_AGENTS)
def test_bot_traffic_creates_nothing(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, agent: str
) -> None:
    every_capture_with_a_user_agent(tracker, ANN, agent)
    assert set(activity(tracker).values()) == {0}
    clock.tick(DAY)
    tracker.scan()
    tracker.dispatch()
    assert receiver.requests == []


def test_a_human_user_agent_is_recorded(tracker: Tracker) -> None:
    every_capture_with_a_user_agent(tracker, ANN, HUMAN)
    assert activity(tracker) == {
        "shop_events_carts": 1,
        "shop_events_browses": 2,
        "shop_events_registrations": 1,
        "shop_events_orders": 1,
        "shop_events_outbox": 2,
    }


def test_crawler_test_addresses_create_nothing(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(bots={"emails": ["*@merchant-test.*", "qa-*@example.com"]})
    for email in ("shopping@merchant-test.google.com", "QA-42@example.com"):
        every_capture_with_a_user_agent(tracker, email, HUMAN)
        tracker.password_changed(email)
        tracker.password_reset_requested(email, reset_url="https://shop.example/r/1")
    counts = activity(tracker)
    assert counts["shop_events_browses"] == 1  # only the anonymous visitor's views
    assert {k: v for k, v in counts.items() if k != "shop_events_browses"} == {
        "shop_events_carts": 0,
        "shop_events_registrations": 0,
        "shop_events_orders": 0,
        "shop_events_outbox": 0,
    }


# ------------------------------------------------------------------------- frequency caps


def test_browse_reminders_are_capped_per_contact(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.product_viewed(email=ANN, item=product(1))
    clock.tick(HOUR)
    assert tracker.scan().abandoned == 1  # the first reminder, at START + 1h
    tracker.dispatch()
    tracker.product_viewed(email=ANN, item=product(2))
    clock.tick(HOUR)
    result = tracker.scan()
    assert (result.abandoned, result.suppressed) == (0, 1)
    assert row_of(tracker, browses, browse_key=f"e:{ANN}").skip_reason == "capped"
    clock.tick(DAY - 2 * HOUR - SECOND)
    tracker.product_viewed(email=ANN, item=product(3))
    clock.tick(HOUR)  # START + 25h - 1s: one second short of 24h since the first reminder
    assert tracker.scan().suppressed == 1
    tracker.product_viewed(email=ANN, item=product(3))
    clock.tick(HOUR)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert [decoded(e)["params"][1] for e in receiver.events] == [items_of(1), items_of(3)]


def test_registration_reminders_are_capped_per_contact(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(unfinished_registration={"contact_interval": "72h"})
    tracker.registration_started(ANN, params={"attempt": "1"})
    clock.tick(DAY)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    tracker.registration_started(ANN, params={"attempt": "2"})  # a new attempt: a new version
    clock.tick(DAY)
    assert tracker.scan().suppressed == 1
    assert row_of(tracker, registrations, email=ANN).skip_reason == "capped"
    tracker.registration_started(
        ANN, params={"attempt": "3"}
    )  # at START + 48h, due at START + 72h …
    clock.tick(DAY)
    assert tracker.scan().suppressed == 1  # … 48h after the first reminder: still capped
    tracker.registration_started(ANN, params={"attempt": "4"})
    clock.tick(DAY)  # 72h after the first reminder
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert sorted(Receiver.params(e)["attempt"] for e in receiver.events) == ["1", "4"]


def test_caps_are_per_flow(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    start_all_marketing(tracker, clock)
    clock.tick(DAY)
    assert tracker.scan().by_flow == {"cart": 1, "browse": 1, "registration": 1}
    tracker.dispatch()
    assert sorted(types_sent(receiver)) == [
        "abandoned_browse",
        "abandoned_cart",
        "unfinished_registration",
    ]


# ------------------------------------------------------------ an order cancels everything


@pytest.mark.parametrize("when", ["before the scan", "after the events were queued"])
def test_an_order_cancels_every_pending_reminder_of_the_contact(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, when: str
) -> None:
    tracker.cart_updated("cart-1", email=ANN, items=[product(1)])
    tracker.cart_updated("cart-2", visitor_id="v-9", items=[product(3)])  # another device
    tracker.identify("v-9", ANN)
    clock.tick(timedelta(minutes=1))
    tracker.product_viewed(email=ANN, item=product(2))
    clock.tick(HOUR)
    if when == "after the events were queued":
        # one cart reminder (the other cart is capped) and the browse reminder
        assert tracker.scan().by_flow == {"cart": 1, "browse": 1}
    tracker.order_placed("order-1", email="ann@EXAMPLE.com", items=[product(1)])
    clock.tick(HOUR)
    assert tracker.scan().abandoned == 0
    result = tracker.dispatch()
    assert types_sent(receiver) == ["orderCreated"]
    for cart_id in ("cart-1", "cart-2"):
        assert row_of(tracker, carts, cart_id=cart_id).state == "converted"
    assert row_of(tracker, browses, browse_key=f"e:{ANN}").state == "converted"
    if when == "after the events were queued":
        assert result.superseded == 2
        assert statuses(tracker) == {
            "abandoned_cart": "superseded",
            "abandoned_browse": "superseded",
            "orderCreated": "sent",
        }

"""From a cart hook to a delivered ``abandoned_cart`` event, against a real receiver.

Time is moved with freezegun; the receiver is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.tables import carts, outbox
from shop_events.testing import Receiver, Reply
from sqlalchemy import event, select, update

from tests.support import API_KEY, DATA, SettingsFactory

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SEED = DATA / "seed_generate_event.txt"
SEED_URL = "https://www.cultbeauty.co.uk/olaplex-no-4-bond-maintenance-shampoo.html"
SEED_IMAGE = "https://site.com/uploads/product/big/20161122/20161122_7zvb.jpg"
SEED_ITEMS = [
    Item(
        name="Hair styler",
        price="341",
        url=SEED_URL,
        imageurl=SEED_IMAGE,
        brand="Le Petit Olivier",
        tags={"weight": "200", "oldprice": "467"},
    ),
    Item(
        name="Magnolia Nobile",
        price=2341,
        url=SEED_URL,
        imageurl=SEED_IMAGE,
        brand="Acqua Di Parma",
        tags={"weight": 100, "oldprice": "4467"},
    ),
]


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


def seed_items_string() -> str:
    """The serialized ``items`` value exactly as the API document prints it."""
    match = re.search(r'"value": "(\{\\"array\\".*\})"\s*$', SEED.read_text(), re.MULTILINE)
    assert match, "the seed's items example was not found"
    text: str = json.loads(f'"{match.group(1)}"')
    return text


def abandon(tracker: Tracker, cart_id: str = "cart-42", email: str = "site@en.net") -> None:
    tracker.cart_updated(
        cart_id,
        email=email,
        items=SEED_ITEMS,
        currency="EUR",
        restore_url="https://shop.example/cart/42",
    )


def rows(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


def test_idle_cart_is_sent_once_after_the_timeout_in_the_seeds_format(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker)
    clock.tick(timedelta(minutes=59, seconds=59))
    assert tracker.scan().abandoned == 0
    tracker.dispatch()
    assert receiver.requests == []

    clock.tick(timedelta(seconds=1))
    assert tracker.scan().abandoned == 1
    assert tracker.dispatch().sent == 1
    assert tracker.scan().abandoned == 0
    assert tracker.dispatch().claimed == 0

    [request] = receiver.requests
    assert request.path == "/api/v1/event"
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode().split(":", 1)[1] == API_KEY
    assert request.headers["Content-Type"] == "application/json; charset=UTF-8"
    body = json.loads(request.raw)
    assert body["eventTypeKey"] == "abandoned_cart"
    assert body["keyValue"] == "site@en.net"
    params = body["params"]
    assert params[0] == {"name": "email", "value": "site@en.net"}
    assert params[1]["name"] == "items"
    assert params[1]["value"] == seed_items_string()  # byte for byte, as the seed prints it
    assert json.loads(params[1]["value"]) == json.loads(seed_items_string())
    extras = {p["name"]: p["value"] for p in params[2:]}
    assert extras == {
        "cart_id": "cart-42",
        "total": "2682",
        "currency": "EUR",
        "cart_url": "https://shop.example/cart/42",
        "step": "1",
    }
    [row] = rows(tracker)
    assert (row.status, row.attempts, row.response_status) == ("sent", 1, 200)
    assert row.body.encode() == request.raw


def test_v2_sends_items_as_real_json(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(api={"version": "v2"}))
    tracker.migrate()
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    assert tracker.dispatch().sent == 1
    [request] = receiver.requests
    assert request.path == "/api/v2/event"
    items = json.loads(request.raw)["params"][1]["value"]
    assert items == json.loads(seed_items_string())


def test_order_before_the_timeout_sends_nothing(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker)
    clock.tick(timedelta(minutes=30))
    tracker.order_placed("order-9", email="site@en.net", items=SEED_ITEMS, cart_id="cart-42")
    clock.tick(timedelta(hours=2))
    assert tracker.scan().abandoned == 0
    tracker.dispatch()
    assert [e["eventTypeKey"] for e in receiver.events] == ["orderCreated"]


def test_order_after_enqueue_supersedes_the_reminder(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    assert tracker.scan().abandoned == 1
    # same shopper, another device: the order names no cart, only the email
    tracker.order_placed("order-9", email="Site@En.net", items=SEED_ITEMS[:1], total="341")
    result = tracker.dispatch()
    assert (result.superseded, result.sent) == (1, 1)
    assert [e["eventTypeKey"] for e in receiver.events] == ["orderCreated"]
    statuses = {r.event_type_key: r.status for r in rows(tracker)}
    assert statuses == {"abandoned_cart": "superseded", "orderCreated": "sent"}


def test_server_error_then_success_delivers_once_in_two_attempts(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    receiver.script(Reply(500, "upstream down"))
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    assert tracker.dispatch().retried == 1
    [row] = rows(tracker)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 500: upstream down")
    assert timedelta(seconds=15) <= row.next_attempt_at - datetime.now(UTC) <= timedelta(seconds=30)

    assert tracker.dispatch().claimed == 0  # not due yet
    clock.tick(timedelta(seconds=31))
    assert tracker.dispatch().sent == 1
    [row] = rows(tracker)
    assert (row.status, row.attempts) == ("sent", 2)
    assert [r.status for r in receiver.requests] == [500, 200]
    assert len(receiver.events) == 1


def test_429_retry_after_is_honoured(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    # the transport also holds the whole process back, in real time, for up to api.timeout
    tracker = Tracker(make_settings(api={"timeout": "1s", "connect_timeout": "1s"}))
    tracker.migrate()
    receiver.script(Reply(429, "Too many requests", headers={"Retry-After": "120"}))
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    tracker.dispatch()
    for _ in range(11):
        clock.tick(timedelta(seconds=10))  # up to 110 s later
        assert tracker.dispatch().claimed == 0
    clock.tick(timedelta(seconds=9))
    assert tracker.dispatch().claimed == 0
    assert len(receiver.requests) == 1
    clock.tick(timedelta(seconds=1))
    assert tracker.dispatch().sent == 1
    assert [r.status for r in receiver.requests] == [429, 200]


def test_400_goes_to_dead_letters_with_the_reason_and_can_be_replayed(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    reason = "The event should have the following params: [orderId]"
    receiver.script(Reply(400, reason))
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    assert tracker.dispatch().dead == 1
    [row] = rows(tracker)
    assert (row.status, row.attempts, row.response_status) == ("dead", 1, 400)
    assert reason in row.last_error
    clock.tick(timedelta(hours=1))
    assert tracker.dispatch().claimed == 0  # dead letters are not retried by themselves

    from shop_events.storage.outbox import replay

    with tracker.engine.begin() as conn:
        assert replay(conn, datetime.now(UTC), ids=[row.id]) == 1
    assert tracker.dispatch().sent == 1


def test_401_pauses_without_spending_attempts_until_the_key_is_fixed(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    bad = Tracker(make_settings(api={"key": "wrong-key"}))
    bad.migrate()
    abandon(bad)
    abandon(bad, cart_id="cart-43", email="other@en.net")
    clock.tick(timedelta(hours=1))
    assert bad.scan().abandoned == 2
    first = bad.dispatch()
    assert first.sent == 0 and first.released >= 1
    assert all((r.status, r.attempts) == ("pending", 0) for r in rows(bad))
    requests_so_far = len(receiver.requests)
    assert all(r.status == 401 for r in receiver.requests)

    clock.tick(timedelta(minutes=4))
    assert bad.dispatch().paused  # no request while paused
    assert len(receiver.requests) == requests_so_far

    clock.tick(timedelta(minutes=1, seconds=1))  # the pause ends: the key is checked, 401
    probe = bad.dispatch()
    assert probe.paused and probe.claimed == 0
    [check] = receiver.requests[requests_so_far:]
    assert (check.method, check.path, check.status) == ("GET", "/api/v1/account/info", 401)
    assert all(r.attempts == 0 for r in rows(bad))

    fixed = Tracker(make_settings())  # the operator sets the right key and restarts
    clock.tick(timedelta(minutes=5, seconds=1))
    assert fixed.dispatch().sent == 2
    assert {(r.status, r.attempts) for r in rows(fixed)} == {("sent", 1)}


def test_cart_changed_after_its_reminder_is_a_new_version(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings(abandoned_cart={"contact_interval": "0s"}))
    tracker.migrate()
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    tracker.dispatch()
    abandon(tracker)  # same contents: the shopper only looked; nothing re-armed
    clock.tick(timedelta(hours=2))
    assert tracker.scan().abandoned == 0
    tracker.cart_updated("cart-42", email="site@en.net", items=SEED_ITEMS[:1])
    clock.tick(timedelta(hours=1))
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert [len(json.loads(Receiver.params(e)["items"])["array"]) for e in receiver.events] == [
        2,
        1,
    ]
    assert {r.dedupe_key for r in rows(tracker)} == {
        "abandoned_cart:cart-42:1:1",
        "abandoned_cart:cart-42:2:1",
    }


def test_change_after_enqueue_supersedes_the_stale_reminder(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(make_settings())
    tracker.migrate()
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    tracker.cart_updated("cart-42", email="site@en.net", items=SEED_ITEMS[:1])
    assert tracker.dispatch().superseded == 1
    clock.tick(timedelta(hours=1))
    # the superseded reminder did not use up the contact's cap
    assert tracker.scan().abandoned == 1
    assert tracker.dispatch().sent == 1
    [event] = receiver.events
    assert len(json.loads(Receiver.params(event)["items"])["array"]) == 1


def test_one_reminder_per_contact_per_interval(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker, "cart-1")
    abandon(tracker, "cart-2")
    clock.tick(timedelta(hours=1))
    result = tracker.scan()
    assert (result.abandoned, result.suppressed) == (1, 1)
    tracker.dispatch()
    assert len(receiver.events) == 1
    abandon(tracker, "cart-3")
    clock.tick(timedelta(hours=1))
    assert tracker.scan().suppressed == 1
    clock.tick(timedelta(hours=22))
    tracker.cart_updated("cart-3", email="site@en.net", items=SEED_ITEMS[:1])
    clock.tick(timedelta(hours=1))
    assert tracker.scan().abandoned == 1  # 24 h after the first reminder


def test_cleared_cart_and_cart_without_email_send_nothing(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker, "cart-1")
    tracker.cart_cleared("cart-1")
    tracker.cart_updated("cart-2", items=SEED_ITEMS)  # anonymous
    tracker.cart_updated("cart-3", email="x@en.net", items=[])  # emptied
    clock.tick(timedelta(hours=1))
    result = tracker.scan()
    assert (result.abandoned, result.suppressed) == (0, 1)
    tracker.cart_updated("cart-2", email="late@en.net", items=SEED_ITEMS)  # now reachable
    clock.tick(timedelta(hours=1))
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert [e["keyValue"] for e in receiver.events] == ["late@en.net"]


def test_a_huge_cart_is_cut_to_fit_and_says_how_many_were_dropped(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    items = [
        Item(name=f"Product {i} " + "x" * 150, price=i, url=f"https://shop.example/p/{i}")
        for i in range(200)
    ]
    tracker.cart_updated("big", email="big@en.net", items=items)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    assert tracker.dispatch().sent == 1
    [request] = receiver.requests
    assert len(request.raw) <= 20_000
    params = Receiver.params(json.loads(request.raw))
    kept = json.loads(params["items"])["array"]
    assert int(params["items_dropped"]) == 200 - len(kept) > 0
    assert [k["name"] for k in kept] == [i.name for i in items[: len(kept)]]
    assert params["total"] == str(sum(range(200)))


def test_expired_lease_is_taken_over_and_the_old_holder_cannot_settle(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    from shop_events.storage import outbox as ob

    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    lease = tracker.settings.delivery.lease
    with tracker.engine.begin() as conn:
        [crashed] = ob.claim(conn, datetime.now(UTC), lease, 10)  # a worker that then dies
    assert tracker.dispatch().claimed == 0
    clock.tick(lease * 10)  # the plugin's clock does not expire a lease: the database's does
    assert tracker.dispatch().claimed == 0
    with tracker.engine.begin() as conn:  # as if the database's clock had moved by the lease
        conn.execute(update(outbox).values(lease_expires_at=ob.database_now(conn)))
    assert tracker.dispatch().sent == 1
    with tracker.engine.begin() as conn:
        assert not ob.settle(conn, crashed, OutboxStatus.DEAD, last_error="late")
        assert ob.renew(conn, crashed, lease) is None
    assert [r.status for r in rows(tracker)] == ["sent"]


def test_a_lease_is_renewed_by_its_holder_only_from_the_databases_clock(
    tracker: Tracker, clock: FrozenDateTimeFactory
) -> None:
    from shop_events.storage import outbox as ob

    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    lease = timedelta(seconds=30)
    with tracker.engine.begin() as conn:
        before = ob.database_now(conn)
        [held] = ob.claim(conn, datetime.now(UTC), lease, 10)
    with tracker.engine.begin() as conn:
        expiry = ob.renew(conn, held, lease)
        after = ob.database_now(conn)
        stranger = dataclasses.replace(held, token="not-the-holder")
        assert ob.renew(conn, stranger, lease) is None
    assert expiry is not None
    # the database's time, not the frozen clock's (days apart): like with like on each engine
    assert before + lease <= expiry <= after + lease
    [row] = rows(tracker)
    assert row.lease_expires_at == expiry


def test_shutdown_releases_claimed_rows_unsent(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    for i in range(5):
        abandon(tracker, f"cart-{i}", f"s{i}@en.net")
    clock.tick(timedelta(hours=1))
    tracker.scan()
    tracker.dispatcher.stopping.set()
    result = tracker.dispatcher.dispatch()
    assert (result.claimed, result.released, result.sent) == (5, 5, 0)
    assert {r.status for r in rows(tracker)} == {"pending"}
    assert receiver.requests == []


def test_rolled_back_host_transaction_leaves_no_cart(
    tracker: Tracker, clock: FrozenDateTimeFactory
) -> None:
    from sqlalchemy.orm import Session

    with Session(tracker.engine) as session:
        tracker.order_placed("o-1", email="a@en.net", items=SEED_ITEMS, session=session)
        tracker.cart_updated("c-1", email="a@en.net", items=SEED_ITEMS, session=session)
        session.rollback()
    with Session(tracker.engine) as session:
        tracker.cart_updated("c-2", email="b@en.net", items=SEED_ITEMS, session=session)
        session.commit()
    with tracker.engine.connect() as conn:
        assert [r.cart_id for r in conn.execute(select(carts.c.cart_id))] == ["c-2"]
    assert rows(tracker) == []


def test_delivered_events_are_recorded_by_groups_not_one_statement_each(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    for n in range(12):
        tracker.logged_in(f"shopper-{n}@example.com")
    settled: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        flat = " ".join(statement.split())
        if flat.startswith(f"UPDATE {outbox.name} SET") and "sent_at" in flat:
            settled.append(flat)

    event.listen(tracker.engine, "before_cursor_execute", note)
    try:
        assert tracker.dispatch().sent == 12
    finally:
        event.remove(tracker.engine, "before_cursor_execute", note)
    assert [(r.status, r.attempts) for r in rows(tracker)] == [("sent", 1)] * 12
    assert len(receiver.events) == 12
    # one statement for all the rows of a group, not one a row (each settled by its lease)
    assert settled
    assert not [s for s in settled if f"WHERE {outbox.name}.id = " in s]

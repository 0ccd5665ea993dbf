"""The platform's contact erasure: queued by ``forget --platform`` (or
``privacy.erase_on_platform``) as an outbox row, delivered as ``DELETE /v1/contact?…&erase=true``
with the guarantees of events (retries on 5xx and 429), and redacted once delivered.

Runs on SQLite, PostgreSQL and MariaDB; time moves with freezegun; the receiver is real.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import ConfigError, Item, Settings, Tracker
from shop_events.config import ApiSettings
from shop_events.delivery.limiter import Family, family_of
from shop_events.delivery.transport import Transport
from shop_events.payload.erasure import ERASURE_TYPE
from shop_events.testing import Receiver, Reply

from tests.privacy.test_forget import mentions
from tests.support import PRIVACY_SECTIONS, SettingsFactory, TrackerFactory, outbox_rows, trackers

ANN = "ann@example.com"
ERASURE = {"externalCustomerId": ANN, "erase": "true"}


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    # a 429 holds the family back in real time for up to api.timeout
    api = {"timeout": "1s", "connect_timeout": "1s"}
    with trackers(make_settings, api=api, **PRIVACY_SECTIONS) as make:
        yield make


def erasure_rows(tracker: Tracker) -> list[tuple[str, str, str, int | None]]:
    return [
        (row.status, row.key_value, row.body, row.response_status)
        for row in outbox_rows(tracker.engine)
        if row.event_type_key == ERASURE_TYPE
    ]


def test_it_is_delivered_as_a_delete_with_the_query_once_the_lease_has_passed(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.cart_updated("cart-1", email=ANN, items=[Item(name="Lamp", price="30")])
    forgotten = tracker.forget(ANN, platform=True)
    assert forgotten.platform_erasure
    assert forgotten["shop_events_carts"] == 1
    [row] = outbox_rows(tracker.engine)
    assert (row.status, row.key_value, row.api_path) == ("pending", ANN, "v1/contact")
    assert row.body == '{"externalCustomerId":"ann@example.com","erase":"true"}'
    assert family_of(row.api_path) is Family.ORDERS  # "other methods": 200/s for the account
    assert tracker.dispatch().claimed == 0  # a send in flight at the erasure ends first
    clock.tick(tracker.settings.delivery.lease - timedelta(seconds=1))
    assert tracker.dispatch().claimed == 0
    clock.tick(timedelta(seconds=1))
    assert tracker.dispatch().sent == 1
    [request] = receiver.requests
    assert (request.method, request.path, request.raw) == ("DELETE", "/api/v1/contact", b"")
    assert receiver.erasures == [ERASURE]
    assert erasure_rows(tracker) == [("sent", "", "{}", 200)]
    assert mentions(tracker, ANN) == []


def test_the_setting_queues_it_for_every_request_and_the_flag_overrides_it(
    make_tracker: TrackerFactory,
) -> None:
    tracker = make_tracker(privacy={"erase_on_platform": True})
    assert tracker.forget(ANN).platform_erasure
    assert not tracker.forget("bob@example.com", platform=False).platform_erasure
    assert [row[1] for row in erasure_rows(tracker)] == [ANN]


def test_the_query_key_and_path_are_settings(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(privacy={"erasure_key": "email", "erasure_path": "v1/contact"})
    tracker.forget(ANN, platform=True)
    clock.tick(tracker.settings.delivery.lease)
    assert tracker.dispatch().sent == 1
    assert receiver.erasures == [{"email": ANN, "erase": "true"}]
    for bad in ({"erasure_key": "external id"}, {"erasure_path": "../v1/contact"}):
        with pytest.raises(ConfigError, match=r"privacy\.erasure_"):
            Settings.load({"privacy": bad})


def test_it_is_retried_on_a_500_and_a_429_like_an_event(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    receiver.script(Reply(500, "oops"), Reply(429, "slow down", headers={"Retry-After": "30"}))
    tracker.forget(ANN, platform=True)
    clock.tick(tracker.settings.delivery.lease)
    assert tracker.dispatch().retried == 1
    [row] = outbox_rows(tracker.engine)
    assert (row.status, row.attempts, row.response_status) == ("pending", 1, 500)
    clock.move_to(row.next_attempt_at)
    assert tracker.dispatch().retried == 1
    [row] = outbox_rows(tracker.engine)
    assert (row.status, row.attempts, row.response_status) == ("pending", 1, 429)
    assert row.next_attempt_at >= tracker.clock() + timedelta(seconds=30)
    clock.move_to(row.next_attempt_at)
    assert tracker.dispatch().sent == 1
    assert [(r.method, r.status) for r in receiver.requests] == [
        ("DELETE", 500),
        ("DELETE", 429),
        ("DELETE", 200),
    ]
    assert receiver.erasures == [ERASURE]
    assert erasure_rows(tracker) == [("sent", "", "{}", 200)]


def test_a_second_request_while_one_is_on_its_way_queues_no_other_and_keeps_it(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.forget(ANN, platform=True)
    again = tracker.forget(ANN.upper(), platform=True)
    assert again["shop_events_outbox"] == 0
    assert len(erasure_rows(tracker)) == 1
    clock.tick(tracker.settings.delivery.lease)
    assert tracker.dispatch().sent == 1
    tracker.forget(ANN, platform=True)  # a new request once the first was delivered
    assert [row[0] for row in erasure_rows(tracker)] == ["sent", "pending"]


def test_a_refused_erasure_is_a_dead_letter_that_keeps_its_query_for_a_replay(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    receiver.script(Reply(404, "Contact not found"))
    tracker.forget(ANN, platform=True)
    clock.tick(tracker.settings.delivery.lease)
    assert tracker.dispatch().dead == 1
    assert erasure_rows(tracker) == [
        ("dead", ANN, '{"externalCustomerId":"ann@example.com","erase":"true"}', 404)
    ]


def test_an_unreachable_api_is_reported_without_the_address() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    transport = Transport(ApiSettings(base_url=f"http://127.0.0.1:{port}/api"))
    try:
        result = transport.delete("v1/contact", ERASURE)
    finally:
        transport.close()
    assert result.status is None
    assert "ann" not in result.text.lower() and "<query>" in result.text

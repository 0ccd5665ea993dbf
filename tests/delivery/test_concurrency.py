"""The adaptive number of sends in progress: grows where it holds delivery back, halves on 429."""

from __future__ import annotations

from prometheus_client import REGISTRY
from shop_events.delivery.concurrency import INITIAL, AdaptiveConcurrency


def round_trip(
    places: AdaptiveConcurrency,
    *,
    queued: bool = True,
    slack: bool = True,
    throttled: bool = False,
) -> None:
    """As many sends as the current number allows, each answered the same way."""
    tickets = [places.take() for _ in range(places.limit)]
    for ticket in tickets:
        places.answered(ticket, queued=queued, slack=slack, throttled=throttled)
        places.give_back()


def test_it_starts_small_and_doubles_each_round_trip_while_sends_queue() -> None:
    places = AdaptiveConcurrency(128)
    assert places.limit == INITIAL
    seen = []
    for _ in range(4):
        round_trip(places)
        seen.append(places.limit)
    assert seen == [16, 32, 64, 128]
    round_trip(places)
    assert places.limit == 128  # never past delivery.threads


def test_it_does_not_grow_when_the_rate_limit_uses_every_slot() -> None:
    places = AdaptiveConcurrency(128)
    for _ in range(5):
        round_trip(places, slack=False)
    assert places.limit == INITIAL


def test_it_does_not_grow_when_no_send_waited_for_a_place() -> None:
    places = AdaptiveConcurrency(128)
    for _ in range(5):
        round_trip(places, queued=False)
    assert places.limit == INITIAL


def test_a_429_halves_it_once_per_round_trip_then_it_grows_by_one_per_round_trip() -> None:
    places = AdaptiveConcurrency(128, initial=64)
    round_trip(places, throttled=True)  # 64 sends of one round trip all refused: one cut
    assert places.limit == 32
    round_trip(places)
    assert places.limit == 33  # additive now, not doubling
    round_trip(places)
    assert places.limit == 34
    round_trip(places, throttled=True)
    assert places.limit == 17


def test_it_never_falls_below_one() -> None:
    places = AdaptiveConcurrency(4, initial=1)
    for _ in range(3):
        round_trip(places, throttled=True)
    assert places.limit == 1
    assert places.has_room()


def test_places_are_held_until_given_back() -> None:
    places = AdaptiveConcurrency(2, initial=2)
    places.take()
    assert places.has_room()
    places.take()
    assert not places.has_room()
    assert places.in_use == 2
    places.give_back()
    assert places.has_room()


def test_the_gauge_shows_the_current_number() -> None:
    places = AdaptiveConcurrency(128)
    round_trip(places)
    gauge = REGISTRY.get_sample_value("shop_events_send_concurrency")
    assert gauge == places.limit == 16

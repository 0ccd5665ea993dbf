"""The pipelined pass against a slow receiver: more sends at once than the concurrency starts
with, and the next batch claimed while the last one is still on the wire.

What is asserted is how many requests the receiver had open at the same moment (from each
request's arrival and answer), never how long anything took.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shop_events import Tracker
from shop_events.delivery.concurrency import INITIAL
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver

from tests.support import SettingsFactory, add_events, identity, status_counts

LATENCY = 0.2


def most_at_once(receiver: Receiver) -> int:
    """The most requests the receiver was handling at the same moment."""
    edges: list[tuple[Any, int]] = []
    for request in receiver.requests:
        edges += [(request.arrived or request.time, 1), (request.time, -1)]
    edges.sort(key=lambda edge: (edge[0], edge[1]))  # an answer before an arrival at a tie
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def drain(
    make_settings: SettingsFactory, receiver: Receiver, events: int, **delivery: Any
) -> tuple[Tracker, Any]:
    tracker = Tracker(make_settings(api={"rate_limit": 1000}, delivery=delivery))
    tracker.migrate()
    add_events(tracker, events)
    receiver.latency = LATENCY
    try:
        result = tracker.dispatch()
    finally:
        tracker.shutdown()
    return tracker, result


def test_a_slow_api_is_met_with_more_sends_at_once(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    tracker, result = drain(make_settings, receiver, 150, threads=48, batch_size=50)
    counts = status_counts(tracker.engine)
    tracker.engine.dispose()
    assert result.sent == 150 == counts[OutboxStatus.SENT.value]
    assert INITIAL < most_at_once(receiver) <= 48
    # it started with INITIAL at once, and grew only once answers came back
    arrivals = sorted(r.arrived or r.time for r in receiver.requests)
    first_answer = min(r.time for r in receiver.requests)
    assert arrivals[INITIAL - 1] < first_answer <= arrivals[INITIAL]
    assert max(Counter(identity(body) for body in receiver.events).values()) == 1


def test_the_next_batch_is_claimed_while_the_last_is_on_the_wire(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    tracker, result = drain(make_settings, receiver, 60, threads=32, batch_size=5)
    tracker.engine.dispose()
    assert result.sent == 60
    assert result.claims >= 12
    # more than one batch of five was open at the receiver at once
    assert most_at_once(receiver) > 5


def test_a_single_claim_stays_a_single_claim(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    tracker = Tracker(make_settings(delivery={"threads": 8, "batch_size": 5}))
    tracker.migrate()
    add_events(tracker, 12)
    try:
        result = tracker.dispatcher.dispatch()
    finally:
        tracker.shutdown()
        tracker.engine.dispose()
    assert (result.claims, result.claimed, result.sent, result.full) == (1, 5, 5, True)

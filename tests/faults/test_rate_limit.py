"""Rate limit: the receiver answers 429 with ``Retry-After: 1`` above a set rate.

Real time (the limiter throttles the wire, which the tests never fake), in-process dispatch
passes against the real receiver:

- with the client's limiter above the receiver's limit and one sending thread, 429s happen, and
  after each one no request at all reaches the receiver before the second it named;
- with ``api.rate_limit`` below the receiver's limit, the 429 count stays near zero.

The receiver's token bucket and the limiter's process-wide block are tested in virtual time in
``tests/testing/test_receiver.py`` and ``tests/delivery/test_transport.py``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from shop_events import Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver

from tests.support import (
    API_KEY,
    POLL,
    add_events,
    figures,
    outbox_rows,
    status_counts,
)

DRAIN_TIMEOUT = 30.0
RETRY_AFTER = timedelta(seconds=1)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def shop_for(tmp_path: Path, receiver: Receiver, **delivery: Any) -> Tracker:
    rate = delivery.pop("rate_limit")
    settings = Settings.load(
        {
            "api": {"base_url": receiver.base_url, "key": API_KEY, "rate_limit": rate},
            "database": {"url": f"sqlite:///{tmp_path / 'shop.db'}"},
            "scheduler": {"enabled": False},
            "delivery": {"backoff_base": "1s", **delivery},
        }
    )
    shop = Tracker(settings)
    shop.migrate()
    return shop


def drain(shop: Tracker, expected: int) -> bool:
    """Dispatch passes until ``expected`` rows are sent; bounded by :data:`DRAIN_TIMEOUT`."""
    deadline = monotonic() + DRAIN_TIMEOUT
    idle = threading.Event()
    while monotonic() < deadline:
        if shop.dispatch().claimed == 0:
            if status_counts(shop.engine)[OutboxStatus.SENT.value] == expected:
                return True
            idle.wait(POLL)  # retries are not due yet
    return False


@pytest.fixture
def limited() -> Iterator[Receiver]:
    with Receiver(api_key=API_KEY) as running:
        yield running


def test_no_request_before_the_time_a_429_named(tmp_path: Path, limited: Receiver) -> None:
    limited.rate_limit = 20.0
    shop = shop_for(tmp_path, limited, rate_limit=1000.0, threads=1, batch_size=100)
    events = 60
    add_events(shop, events)
    try:
        drained = drain(shop, events)
        rows = outbox_rows(shop.engine)
    finally:
        shop.shutdown()
        shop.engine.dispose()

    answered = sorted(limited.requests, key=lambda r: r.arrived or r.time)
    refused = [r for r in answered if r.status == 429]
    early = [
        (before, after)
        for before, after in itertools.pairwise(answered)
        if before.status == 429
        and after.arrived is not None
        and after.arrived < before.time + RETRY_AFTER
    ]
    result = figures(rows, limited)
    result.extra.update(answered_429=len(refused), requests_inside_retry_after=len(early))
    result.show("rate limit, client limiter above the receiver's")

    assert drained, f"statuses {status_counts(shop.engine)}"
    assert refused, "the receiver's limit was never reached: the test proves nothing"
    assert all(r.headers.get("Authorization") for r in answered)
    assert early == []
    # each refused row waited at least its Retry-After before its own next attempt
    for r in refused:
        later = [a for a in answered if a.json == r.json and a.arrived and a.arrived > r.time]
        assert later and later[0].arrived is not None
        assert later[0].arrived >= r.time + RETRY_AFTER
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert result.attempts == events  # a 429 is the account's, not the event's: no attempt spent


def test_client_limiter_below_the_receivers_limit_keeps_429s_near_zero(
    tmp_path: Path, limited: Receiver
) -> None:
    limited.rate_limit = 50.0
    shop = shop_for(tmp_path, limited, rate_limit=40.0, threads=4, batch_size=50)
    events = 120
    add_events(shop, events)
    start = monotonic()
    try:
        drained = drain(shop, events)
        seconds = monotonic() - start
        rows = outbox_rows(shop.engine)
    finally:
        shop.shutdown()
        shop.engine.dispose()

    refused = [r for r in limited.requests if r.status == 429]
    result = figures(rows, limited)
    result.extra.update(
        answered_429=len(refused), seconds=round(seconds, 1), per_second=round(events / seconds)
    )
    result.show("rate limit, api.rate_limit 40/s, receiver 50/s")

    assert drained, f"statuses {status_counts(shop.engine)}"
    assert len(refused) <= 1  # the limiter, not the receiver, set the pace
    assert result.lost == 0
    assert result.delivered_twice == 0

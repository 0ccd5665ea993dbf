"""Outage: the platform refuses connections for an hour (simulated; the clock is moved).

In-process: a Tracker and its ``dispatch()`` passes, the clock moved with freezegun in 10 s
steps, the receiver stopped so its port refuses connections. Every failed attempt must set the
next one by the backoff schedule (exponential, capped, half of it jitter), nothing may be
dead-lettered within ``delivery.give_up_after``, and when the receiver is back every event is
delivered, once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver

from tests.support import SettingsFactory, add_events, engine_name, figures, outbox_rows

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
OUTAGE = timedelta(hours=1)
STEP = timedelta(seconds=10)
BASE = timedelta(seconds=30)
CAP = timedelta(hours=1)
GIVE_UP = timedelta(hours=2)
CARTS = 5
EVENTS = 5


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen  # type: ignore[misc]


@pytest.fixture
def shop(make_settings: SettingsFactory) -> Iterator[Tracker]:
    settings = make_settings(
        delivery={
            "backoff_base": "30s",
            "backoff_max": "1h",
            "give_up_after": "2h",
            "max_attempts": 25,
        },
        abandoned_cart={"contact_interval": "0s"},
    )
    made = Tracker(settings)
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()


def test_an_hour_of_refused_connections_backs_off_keeps_everything_and_delivers_once(
    shop: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, database_url: str
) -> None:
    for i in range(CARTS):
        shop.cart_updated(
            f"cart-{i}",
            email=f"cart-{i}@example.com",
            items=[Item(name="Hair styler", price="341", url="https://shop.example/p/1")],
        )
    clock.tick(timedelta(hours=1))
    assert shop.scan().abandoned == CARTS
    add_events(shop, EVENTS)
    receiver.stop()  # from now on its port refuses connections

    gaps: dict[int, list[tuple[int, timedelta]]] = defaultdict(list)
    """Per row: (attempt number, delay until the next attempt) after each failure."""
    seen: dict[int, int] = {}
    due: dict[int, datetime] = {}
    outage_end = datetime.now(UTC) + OUTAGE
    passes = 0
    while datetime.now(UTC) < outage_end:
        dispatched = shop.dispatch()
        passes += 1
        assert dispatched.sent == dispatched.dead == 0
        now = datetime.now(UTC)
        for row in outbox_rows(shop.engine):
            if row.attempts != seen.get(row.id, 0):
                assert row.attempts == seen.get(row.id, 0) + 1  # one attempt per due time
                if row.id in due:  # tried once due, never before, and within one pass after
                    assert due[row.id] <= now <= due[row.id] + STEP
                seen[row.id] = row.attempts
                gaps[row.id].append((row.attempts, row.next_attempt_at - now))
            due[row.id] = row.next_attempt_at
        if passes == 120:  # 20 minutes into the outage, the shop keeps taking orders
            add_events(shop, EVENTS, "during")
        clock.tick(STEP)

    during = outbox_rows(shop.engine)
    schedule_ok = 0
    for row_gaps in gaps.values():
        for attempt, gap in row_gaps:
            full = min(CAP, BASE * 2 ** (attempt - 1))
            assert full / 2 <= gap <= full, (attempt, gap)
            schedule_ok += 1
    assert {r.status for r in during} == {OutboxStatus.PENDING.value}  # nothing dead, nothing stuck
    assert all(r.last_error and "ConnectionError" in r.last_error for r in during)
    assert min(r.attempts for r in during if not r.dedupe_key.startswith("fault_test:during")) >= 6

    receiver.start()  # the platform is back, on the same port
    back_at = datetime.now(UTC)
    deadline = back_at + CAP
    while datetime.now(UTC) < deadline:
        shop.dispatch()
        if all(r.status == OutboxStatus.SENT.value for r in outbox_rows(shop.engine)):
            break
        clock.tick(STEP)
    recovered_in = datetime.now(UTC) - back_at
    rows = outbox_rows(shop.engine)

    result = figures(rows, receiver)
    example = next(iter(gaps.values()))
    result.extra.update(
        refused_attempts=sum(len(g) for g in gaps.values()),
        backoff_gaps_checked=schedule_ok,
        first_row_gaps_s=[round(gap.total_seconds()) for _, gap in example],
        delivered_within_min=round(recovered_in.total_seconds() / 60, 1),
    )
    result.show(f"outage, {engine_name(database_url)}")

    assert {r.status for r in rows} == {OutboxStatus.SENT.value}
    assert result.created == CARTS + 2 * EVENTS
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert result.requests == result.created  # refused attempts never reached the platform
    assert result.attempts == result.extra["refused_attempts"] + result.created
    assert recovered_in <= CAP
    assert GIVE_UP > OUTAGE

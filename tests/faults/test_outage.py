"""Outage: the platform refuses connections for an hour (simulated; the clock is moved).

In-process: a Tracker and its ``dispatch()`` passes, the clock moved with freezegun in 10 s
steps, the receiver stopped so its port refuses connections (or answering 503). The first
``delivery.circuit_failures`` failures open the shared circuit: no attempt is spent while it is
open, one event probes the API every ``delivery.probe_interval``, and once the receiver answers
the backlog goes out at once, in creation order, every event once.

Before the circuit, each row waited out its own backoff: the backlog went out 39-49 minutes
after the API returned, every row spending attempts. With it: the first event goes within one
probe interval (<= 30 s here) and the whole backlog on the next passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.health import CIRCUIT
from shop_events.storage import pause
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver, Reply

from tests.support import (
    SettingsFactory,
    add_events,
    engine_name,
    figures,
    identity,
    outbox_rows,
)

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
OUTAGE = timedelta(hours=1)
STEP = timedelta(seconds=10)
PROBE = timedelta(seconds=30)
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
            "circuit_failures": 5,
            "probe_interval": "30s",
            "threads": 1,
        },
        abandoned_cart={"contact_interval": "0s"},
    )
    made = Tracker(settings)
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()


def _backlog(shop: Tracker, clock: FrozenDateTimeFactory) -> None:
    for i in range(CARTS):
        shop.cart_updated(
            f"cart-{i}",
            email=f"cart-{i}@example.com",
            items=[Item(name="Hair styler", price="341", url="https://shop.example/p/1")],
        )
    clock.tick(timedelta(hours=1))
    assert shop.scan().abandoned == CARTS
    add_events(shop, EVENTS)


@pytest.mark.parametrize("fault", ["refused", "503"])
def test_an_hour_of_outage_opens_the_circuit_spends_nothing_and_resumes_at_once(
    shop: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    database_url: str,
    fault: str,
) -> None:
    _backlog(shop, clock)
    if fault == "refused":
        receiver.stop()  # from now on its port refuses connections
    else:
        receiver.rule(lambda body: True, Reply(503, "unavailable"))

    probes: set[datetime] = set()
    outage_end = datetime.now(UTC) + OUTAGE
    passes = 0
    while datetime.now(UTC) < outage_end:
        dispatched = shop.dispatch()
        passes += 1
        assert dispatched.sent == dispatched.dead == 0
        with shop.engine.connect() as conn:
            circuit = pause.circuit(conn)
        if passes > 1:
            assert circuit is not None  # open after the first pass, for the whole outage
            assert CIRCUIT in shop.health().problems(shop.settings)
            probes.add(circuit.until)
            # no attempt is spent while it is open (the ones that opened it were given back)
            assert all(r.attempts == 0 for r in outbox_rows(shop.engine))
        if passes == 120:  # 20 minutes into the outage, the shop keeps taking orders
            add_events(shop, EVENTS, "during")
        clock.tick(STEP)

    during = outbox_rows(shop.engine)
    assert {r.status for r in during} == {OutboxStatus.PENDING.value}  # nothing dead, nothing stuck
    # one probe per probe_interval, whatever the pass rate
    assert OUTAGE / PROBE - 2 <= len(probes) <= OUTAGE / PROBE + 1

    if fault == "refused":
        receiver.start()  # the platform is back, on the same port
    else:
        receiver.clear()
    refused_requests = len(receiver.requests)
    back_at = datetime.now(UTC)
    deadline = back_at + CAP
    while datetime.now(UTC) < deadline:
        shop.dispatch()
        if all(r.status == OutboxStatus.SENT.value for r in outbox_rows(shop.engine)):
            break
        clock.tick(STEP)
    recovered_in = datetime.now(UTC) - back_at
    rows = outbox_rows(shop.engine)
    first_sent = min(r.sent_at for r in rows if r.sent_at is not None)
    first_in = first_sent.replace(tzinfo=UTC) - back_at

    result = figures(rows, receiver)
    result.extra.update(
        probes=len(probes),
        first_delivered_after_s=round(first_in.total_seconds()),
        delivered_within_s=round(recovered_in.total_seconds()),
        before_min="39-49",
    )
    result.show(f"outage ({fault}), {engine_name(database_url)}")

    assert {r.status for r in rows} == {OutboxStatus.SENT.value}
    assert result.created == CARTS + 2 * EVENTS
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert first_in <= timedelta(seconds=60)
    assert recovered_in <= timedelta(seconds=60)
    assert all(r.attempts == 1 for r in rows)  # the outage cost no row an attempt
    # the backlog went in creation order
    arrived = [
        identity(request.json)
        for request in receiver.requests[refused_requests:]
        if request.status == 200
    ]
    created = [identity(json.loads(r.body)) for r in sorted(rows, key=lambda r: r.id)]
    assert arrived == created
    with shop.engine.connect() as conn:
        assert pause.circuit(conn) is None
    assert GIVE_UP > OUTAGE


def test_one_failure_among_successes_backs_off_alone(
    shop: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    _backlog(shop, clock)
    receiver.script(Reply(200), Reply(500, "boom"), Reply(200))
    dispatched = shop.dispatch()
    assert dispatched.retried == 1 and not dispatched.circuit_open
    with shop.engine.connect() as conn:
        assert pause.circuit(conn) is None
    retried = [r for r in outbox_rows(shop.engine) if r.status == OutboxStatus.PENDING.value]
    assert len(retried) == 1 and retried[0].attempts == 1
    assert retried[0].next_attempt_at.replace(tzinfo=UTC) >= datetime.now(UTC) + BASE / 2

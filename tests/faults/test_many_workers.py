"""Many workers: four ``shop-events worker`` processes on one PostgreSQL database.

2,000 carts come due at once and 2,000 immediate events are queued; 100 more carts were bought
before they came due. Every worker scans and dispatches every second. Every event must reach
the receiver exactly once, and no bought cart may be reminded.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from shop_events import Item, Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver

from tests.support import (
    Workers,
    add_carts,
    add_events,
    base_sections,
    figures,
    identity,
    outbox_rows,
    status_counts,
    wait_until,
    write_config,
)

WORKERS = 4
CARTS = 2000
EVENTS = 2000
BOUGHT = 100
DELIVERY_TIMEOUT = 45.0
SETTLE_TIMEOUT = 10.0


@pytest.mark.postgres
def test_four_workers_deliver_every_event_exactly_once(
    tmp_path: Path, pg_url: str, receiver: Receiver, workers: Workers
) -> None:
    sections = base_sections(receiver, pg_url)
    sections["delivery"] = {"threads": 8, "batch_size": 100}
    config = write_config(tmp_path / "shop.toml", sections)
    settings = Settings.from_file(config, env={})
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    shop = Tracker(settings.override(scheduler={"enabled": False}), clock=lambda: two_hours_ago)
    shop.migrate()

    add_carts(shop, CARTS, "cart")
    add_events(shop, EVENTS, "event")
    add_carts(shop, BOUGHT, "bought")
    for i in range(BOUGHT):
        shop.order_placed(
            f"order-{i}",
            email=f"bought-{i}@example.com",
            items=[Item(name="Product", price="10", url="https://shop.example/p/1")],
            cart_id=f"bought-{i}",
        )
    expected = CARTS + EVENTS + BOUGHT

    start = time.monotonic()
    running = [workers.start(config, f"worker{i}") for i in range(WORKERS)]
    arrived = receiver.wait_for_arrivals(expected, timeout=DELIVERY_TIMEOUT)
    elapsed = time.monotonic() - start
    settled = wait_until(
        lambda: status_counts(shop.engine)[OutboxStatus.SENT.value] >= expected, SETTLE_TIMEOUT
    )
    stopped = [worker.terminate() for worker in running]
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(
        workers=WORKERS,
        seconds=round(elapsed, 1),
        events_per_second=round(result.delivered / elapsed),
        statuses=dict(Counter(r.status for r in rows)),
    )
    result.show("many workers")

    assert arrived, f"{receiver.arrived} of {expected} arrived\n{workers.outputs()}"
    assert settled, f"statuses {status_counts(shop.engine)}"
    assert all(code == 0 for code, _ in stopped), workers.outputs()
    # a dispatch pass outlasting its interval is normal while draining: no warning per second
    assert "maximum number of running instances" not in workers.outputs()
    assert result.created == expected
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert result.requests == expected
    assert result.attempts == expected  # one attempt each: nothing failed, nothing resent
    assert {r.status for r in rows} == {OutboxStatus.SENT.value}
    kinds = Counter(body["eventTypeKey"] for body in receiver.events)
    assert kinds == {"abandoned_cart": CARTS, "fault_test": EVENTS, "orderCreated": BOUGHT}
    reminded = {identity(body) for body in receiver.events}
    assert not any(f"abandoned_cart:bought-{i}" in reminded for i in range(BOUGHT))

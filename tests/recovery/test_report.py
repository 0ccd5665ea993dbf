"""The recovery report's numbers equal counts made independently from the receiver's log: what
was delivered (and when), which links the shoppers opened, which orders followed."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from decimal import Decimal

from freezegun.api import FrozenDateTimeFactory
from shop_events import Item
from shop_events.recovery.links import open_link
from shop_events.testing import Receiver

from tests.support import RECOVERY_START as START
from tests.support import REPORT_KEYS, TrackerFactory, link_token

HOUR = timedelta(hours=1)
WINDOW = timedelta(days=2)
SHOPPERS = 40


def test_the_report_equals_the_receivers_log(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(
        abandoned_cart={"steps": ["1h", "24h", "72h"], "contact_interval": "0s"},
        recovery={
            "links": True,
            "base_url": "https://shop.example",
            "secret": "report-test-secret-0123456789",
            "attribution_window": "2d",
        },
    )
    chance = random.Random(20261202)
    plans: dict[str, tuple[str, int]] = {}  # email → (what they do, at which hour)
    for n in range(SHOPPERS):
        email = f"s{n}@example.com"
        plans[email] = (
            chance.choice(["idle", "click", "order", "click-twice"]),
            chance.randint(2, 100),
        )
        tracker.cart_updated(
            f"cart-{n}",
            email=email,
            items=[Item(name="Lamp", price=10 + n)],
            currency=chance.choice(["EUR", "USD"]),
            restore_url=f"https://shop.example/cart/{n}",
        )
    opened: set[str] = set()
    ordered: set[str] = set()
    for hour in range(1, 120):
        clock.move_to(START + hour * HOUR)
        tracker.scan()
        tracker.dispatch()
        for email, (plan, at) in plans.items():
            if hour != at or email in ordered:
                continue
            if plan.startswith("click"):
                mine = [e for e in receiver.events if e["keyValue"] == email]
                if mine:
                    token = link_token(mine[-1])
                    for _ in range(2 if plan == "click-twice" else 1):
                        open_link(tracker.engine, tracker.settings, token, tracker.clock())
                    opened.add(token)
            if plan != "idle":
                n = int(email[1:].split("@")[0])
                tracker.order_placed(
                    f"order-{n}",
                    email=email,
                    items=[Item(name="Lamp", price=10 + n)],
                    currency="EUR" if n % 2 else "USD",
                    cart_id=f"cart-{n}",
                )
                ordered.add(email)
    tracker.dispatch()

    # independently, from what the receiver got and when
    log = [(q.time, q.json) for q in receiver.requests if q.status == 200]
    reminders = [(t, e) for t, e in log if e["eventTypeKey"] == "abandoned_cart"]
    orders = [(t, e) for t, e in log if e["eventTypeKey"] == "orderCreated"]
    by_step = Counter(int(Receiver.params(e)["step"]) for _, e in reminders)
    recovered: list[tuple[str, Decimal]] = []
    for placed, event in orders:
        before = [t for t, e in reminders if e["keyValue"] == event["keyValue"] and t <= placed]
        if before and placed - max(before) <= WINDOW:
            params = Receiver.params(event)
            recovered.append((params["currency"], Decimal(params["total"])))
    revenue: dict[str, Decimal] = {}
    for currency, total in recovered:
        revenue[currency] = revenue.get(currency, Decimal(0)) + total

    report = tracker.recovery_report(since=START, until=START + 200 * HOUR)
    flow = report.cart
    assert flow.abandoned == by_step[1] == SHOPPERS
    assert flow.reminders_delivered == dict(by_step)
    assert flow.clicks == len(opened) > 0
    assert flow.recovered_orders == len(recovered) > 0
    assert flow.recovered_revenue == revenue
    assert flow.recovery_rate == round(len(recovered) / SHOPPERS, 4)
    daily = {d.day: d for d in flow.daily}
    assert sum(d.reminders_delivered for d in daily.values()) == sum(by_step.values())
    assert sum(d.recovered_orders for d in daily.values()) == len(recovered)
    assert {placed.date() for placed, _ in orders} <= set(daily)
    as_json = report.as_json()
    assert set(as_json) == REPORT_KEYS
    assert as_json["recovered_revenue"] == {c: str(v) for c, v in sorted(revenue.items())}
    assert set(as_json["flows"]) == {
        "abandoned_cart",
        "abandoned_browse",
        "unfinished_registration",
    }

"""The backfill checks every past order with live capture's rules: a bad one is skipped, named
by its place, its id, the field and the rule, and never stops the others."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from shop_events import Item, Tracker, ValidationError
from shop_events.backfill.run import SKIPPED_KEPT

from tests.support import PLACED, past_order, status_counts


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"email": "not-an-email"}, "orders[0].email", "is not a valid email address"),
        ({"items": "Lamp"}, "orders[0].items", ""),
        ({"items": [{"name": "Lamp"}]}, "orders[0].items[0].price", ""),
        ({"total": "-3"}, "orders[0].total", ""),
        ({"currency": "euro"}, "orders[0].currency", "3-letter ISO 4217 code"),
        ({"status": "X" * 65}, "orders[0].status", "at most 64 characters"),
        ({"created": datetime(2024, 3, 22, 14, 30)}, "orders[0].created", "timezone-aware"),
        ({"created": "2024-03-22"}, "orders[0].created", "must be a datetime"),
        (
            {"created": datetime.now(UTC) + timedelta(days=1)},
            "orders[0].created",
            "is in the future",
        ),
        ({"order_id": None}, "orders[0].order_id", ""),
    ],
)
def test_a_bad_field_is_named_with_the_orders_place_and_id(
    sqlite_tracker: Tracker, changes: dict[str, Any], field: str, rule: str
) -> None:
    report = sqlite_tracker.backfill_orders([past_order(0, **changes)])
    assert (report.read, report.queued, report.invalid) == (1, 0, 1)
    [skipped] = report.skipped
    assert isinstance(skipped.error, ValidationError)
    assert skipped.error.field == field
    assert rule in skipped.error.rule
    if changes.get("order_id", "") is not None:
        assert skipped.order_id == "past-0"
        assert skipped.error.rule.endswith("(order 'past-0')")
    assert status_counts(sqlite_tracker.engine) == {}


def test_a_missing_field_and_a_value_that_is_no_order_are_named(sqlite_tracker: Tracker) -> None:
    order = past_order(0)
    del order["created"]
    report = sqlite_tracker.backfill_orders([order, "past-1", None])
    assert [str(s.error) for s in report.skipped] == [
        "orders[0].created: is required (order 'past-0')",
        "orders[1]: must be a mapping or an object with order_id, email, items and created, "
        "got str",
        "orders[2]: must be a mapping or an object with order_id, email, items and created, "
        "got NoneType",
    ]


def test_bad_orders_among_thousands_are_skipped_and_every_other_one_is_queued(
    sqlite_tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {17: {"email": "nobody"}, 503: {"created": datetime(2024, 1, 1)}, 1999: {"items": 3}}
    orders = [past_order(n, **bad.get(n, {})) for n in range(2000)]
    with caplog.at_level(logging.WARNING, logger="shop_events.backfill"):
        report = sqlite_tracker.backfill_orders(orders, page_size=300)
    assert (report.read, report.queued, report.rows, report.invalid) == (2000, 1997, 1997, 3)
    assert [(s.index, s.order_id, s.error.field) for s in report.skipped] == [
        (17, "past-17", "orders[17].email"),
        (503, "past-503", "orders[503].created"),
        (1999, "past-1999", "orders[1999].items"),
    ]
    assert status_counts(sqlite_tracker.engine) == {"pending": 1997}
    logged = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(logged) == 3 and "orders[503].created" in logged[1]


def test_past_the_first_hundred_skipped_orders_are_counted_not_listed(
    sqlite_tracker: Tracker,
) -> None:
    orders = [past_order(n, email="broken") for n in range(SKIPPED_KEPT + 20)]
    report = sqlite_tracker.backfill_orders([*orders, past_order(999)])
    assert report.invalid == SKIPPED_KEPT + 20
    assert len(report.skipped) == SKIPPED_KEPT
    assert report.queued == 1


@dataclasses.dataclass
class ShopOrder:
    """An order as a shop's own object: attributes, extra ones ignored."""

    order_id: int
    email: str
    items: list[Item]
    created: datetime
    total: Decimal | None = None
    currency: str | None = None
    status: str | None = None
    notes: str = ""


def test_an_object_is_an_order_and_the_defaults_are_live_captures(
    sqlite_tracker: Tracker,
) -> None:
    items = [Item(name="Lamp", price=Decimal("19.90"), quantity=2)]
    order = ShopOrder(order_id=7, email="Ann@Example.com", items=items, created=PLACED)
    report = sqlite_tracker.backfill_orders([order])
    assert report.queued == 1
    with sqlite_tracker.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT dedupe_key, key_value, body FROM shop_events_outbox")
        dedupe_key, key_value, body = row.one()
    assert (dedupe_key, key_value) == ("backfill:order:7:INITIALIZED", "ann@example.com")
    assert '"totalCost":39.8' in body and '"status":"INITIALIZED"' in body


@pytest.mark.parametrize("orders", [{"order_id": 1}, "orders", 5, b"x"])
def test_something_that_is_not_a_list_of_orders_is_refused(
    sqlite_tracker: Tracker, orders: Any
) -> None:
    with pytest.raises(ValidationError) as raised:
        sqlite_tracker.backfill_orders(orders)
    assert raised.value.field == "orders"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": True}, "page_size"),
        ({"as_events": "yes"}, "as_events"),
        ({"checkpoint": "x" * 100}, "checkpoint"),
    ],
)
def test_bad_options_are_refused_before_anything_is_queued(
    sqlite_tracker: Tracker, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        sqlite_tracker.backfill_orders([past_order(0)], **options)
    assert raised.value.field == field
    assert status_counts(sqlite_tracker.engine) == {}

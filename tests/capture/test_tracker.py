"""Capture: bad input is refused with the field and the rule, and nothing is half-written."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from shop_events import Item, StorageError, Tracker, ValidationError
from shop_events.storage.tables import carts, outbox
from sqlalchemy import func, select
from sqlalchemy.orm import Session

GOOD = [Item(name="Hair styler", price=Decimal("23.50"), url="https://shop.example/p/1")]


def count(tracker: Tracker) -> tuple[int, int]:
    with tracker.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(carts)).scalar_one(),
            conn.execute(select(func.count()).select_from(outbox)).scalar_one(),
        )


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"items": None}, "items", "must be a list"),
        ({"items": "Hair styler"}, "items", "must be a list"),
        ({"items": [Item(name="A", price="12,50")]}, "items[0].price", "must be a number"),
        ({"items": [Item(name="A", price=-1)]}, "items[0].price", "must not be negative"),
        ({"items": [Item(name="A", price=Decimal("NaN"))]}, "items[0].price", "finite"),
        ({"items": [{"price": "1"}]}, "items[0].name", "is required"),
        ({"items": [GOOD[0], Item(name="", price=1)]}, "items[1].name", "must not be empty"),
        ({"items": [Item(name="A", price=1, url="ftp://shop/p/1")]}, "items[0].url", "http(s)"),
        ({"items": [Item(name="A", price=1, imageurl="/i/1.jpg")]}, "items[0].imageurl", "http(s)"),
        ({"items": [Item(name="A", price=1, quantity=0)]}, "items[0].quantity", "≥ 1"),
        ({"items": [{"name": "A", "price": 1, "colour": "red"}]}, "items[0].colour", "tags"),
        ({"items": GOOD, "email": "not-an-email"}, "email", "not a valid email"),
        ({"items": GOOD, "currency": "euro"}, "currency", "ISO 4217"),
        ({"items": GOOD, "restore_url": "javascript:alert(1)"}, "restore_url", "http(s)"),
    ],
)
def test_bad_cart_input_names_the_field_and_writes_nothing(
    tracker: Tracker, kwargs: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        tracker.cart_updated("cart-1", **kwargs)
    assert caught.value.field == field
    assert rule in caught.value.rule
    assert str(caught.value).startswith(f"{field}: ")
    assert count(tracker) == (0, 0)


@pytest.mark.parametrize("cart_id", ["", "   ", "x" * 256, None, 1.5])
def test_bad_cart_id_is_refused(tracker: Tracker, cart_id: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        tracker.cart_updated(cart_id, items=GOOD)
    assert caught.value.field == "cart_id"
    assert count(tracker) == (0, 0)


def test_bad_order_input_converts_nothing_and_queues_nothing(tracker: Tracker) -> None:
    tracker.cart_updated("cart-1", email="ann@example.com", items=GOOD)
    with pytest.raises(ValidationError) as caught:
        tracker.order_placed("o-1", email="ann@example.com", items=GOOD, total="lots")
    assert caught.value.field == "total"
    with pytest.raises(ValidationError):
        tracker.order_placed("o-1", email="ann@", items=GOOD)
    assert count(tracker) == (1, 0)
    with tracker.engine.connect() as conn:
        assert conn.execute(select(carts.c.state)).scalar_one() == "active"


def test_prices_are_kept_as_the_shop_wrote_them(tracker: Tracker) -> None:
    tracker.cart_updated(
        "c",
        email="a@example.com",
        items=[
            Item(name="A", price=Decimal("23.50")),
            Item(name="B", price=0.1, quantity=3),
            Item(name="C", price="341"),
            Item(name="D", price=7),
        ],
    )
    with tracker.engine.connect() as conn:
        snapshot = conn.execute(select(carts.c["items"])).scalar_one()
    assert '"price":"23.50"' in snapshot
    assert '"price":"0.1"' in snapshot and "0.1000" not in snapshot
    assert '"price":"341"' in snapshot and '"price":"7"' in snapshot


def test_version_counts_changes_only(tracker: Tracker) -> None:
    for items in (GOOD, GOOD, [*GOOD, Item(name="B", price=2)], GOOD):
        tracker.cart_updated("c", email="a@example.com", items=items)
    with tracker.engine.connect() as conn:
        assert conn.execute(select(carts.c.version)).scalar_one() == 3


def test_session_and_connection_together_are_refused(tracker: Tracker) -> None:
    with (
        Session(tracker.engine) as session,
        tracker.engine.connect() as conn,
        pytest.raises(ValidationError) as caught,
    ):
        tracker.cart_updated("c", items=GOOD, session=session, connection=conn)
    assert caught.value.field == "session"


def test_host_connection_commit_keeps_the_row(tracker: Tracker) -> None:
    with tracker.engine.begin() as conn:
        tracker.cart_updated("c", email="a@example.com", items=GOOD, connection=conn)
    assert count(tracker) == (1, 0)


def test_storage_failure_is_reported_not_swallowed(tracker: Tracker) -> None:
    broken = Tracker(tracker.settings.override(database={"url": "sqlite:////nonexistent/dir/x.db"}))
    with pytest.raises(StorageError) as caught:
        broken.cart_updated("c", email="a@example.com", items=GOOD)
    assert "cart_updated('c') was not recorded" in str(caught.value)


def test_custom_event_checks_the_platform_rules(tracker: Tracker) -> None:
    with pytest.raises(ValidationError) as caught:
        tracker.custom_event("wish,list", key_value="a@example.com")
    assert caught.value.field == "event_type_key"
    with pytest.raises(ValidationError) as caught:
        tracker.custom_event("wishlist", key_value="x" * 301)
    assert caught.value.field == "key_value"
    with pytest.raises(ValidationError) as caught:
        tracker.custom_event("wishlist", key_value="a", params={"n" * 101: "v"})
    assert "at most 100" in caught.value.rule
    with pytest.raises(ValidationError) as caught:
        tracker.custom_event("wishlist", key_value="a", params={"blob": "x" * 20_000})
    assert caught.value.field == "event"
    assert count(tracker) == (0, 0)
    key = tracker.custom_event("wishlist", key_value="a", params={"n": 1}, dedupe_key="w-1")
    assert tracker.custom_event("wishlist", key_value="a", params={"n": 1}, dedupe_key=key) == key
    assert count(tracker) == (0, 1)


def cart_state(tracker: Tracker, cart_id: str) -> tuple[str, str | None, int]:
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts).where(carts.c.cart_id == cart_id)).one()
    return row.state, row.skip_reason, row.version


def test_a_refused_cart_update_suppresses_the_state_recorded_before(tracker: Tracker) -> None:
    tracker.cart_updated("c", email="a@example.com", items=GOOD)
    with pytest.raises(ValidationError) as caught:
        tracker.cart_updated("c", email="a@example.com", items=[{"name": "A", "price": -1}])
    assert caught.value.field == "items[0].price"
    assert cart_state(tracker, "c") == ("suppressed", "invalid", 1)
    tracker.cart_updated("c", email="a@example.com", items=GOOD)  # the same state, valid
    assert cart_state(tracker, "c") == ("active", None, 1)
    tracker.cart_updated("c", email="a@example.com", items=[*GOOD, Item(name="B", price=2)])
    assert cart_state(tracker, "c") == ("active", None, 2)


def test_a_rejected_cart_that_was_cleared_or_never_seen_stays_as_it_is(tracker: Tracker) -> None:
    assert tracker.cart_rejected("unknown") is False
    tracker.cart_updated("c", email="a@example.com", items=GOOD)
    tracker.cart_cleared("c")
    assert tracker.cart_rejected("c") is False
    with pytest.raises(ValidationError):
        tracker.cart_updated("c", items=GOOD, currency="euro")
    assert cart_state(tracker, "c")[:2] == ("cleared", None)
    assert count(tracker) == (1, 0)

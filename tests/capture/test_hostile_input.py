"""Hostile input at the hooks: lone surrogates, deep nesting, huge numbers and huge exponents are
refused with a :class:`ValidationError` naming the field, never an ``UnicodeEncodeError``,
``RecursionError``, ``ValueError`` or ``OverflowError``, and never after gigabytes of digits.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from shop_events import Item, Tracker, ValidationError
from shop_events.storage.tables import metadata
from sqlalchemy import func, select

from tests.support import SettingsFactory

ANN = "ann@example.com"
BAD = "caf\ud800e"
"""Text with a lone surrogate: valid in a Python ``str``, not encodable as UTF-8."""
HUGE = 10**5000
"""More digits than Python turns into text (4300) unless told otherwise."""
SCHEMA = {"10001": "date", "10002": "number", "10003": "text", "10004": "bool"}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def item(**fields: Any) -> Item:
    return Item(**{"name": "Mug", "price": 5, **fields})


@pytest.fixture
def hooks(make_settings: SettingsFactory) -> Iterator[Tracker]:
    """A tracker with a contact field schema and the Orders API on."""
    tracker = Tracker(make_settings(contacts={"fields": SCHEMA}, orders={"api": True}))
    tracker.migrate()
    yield tracker
    tracker.shutdown()
    tracker.engine.dispose()


# (method, args, kwargs, the field the error names); the comment says what the code raised
# before these inputs were refused.
CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    # lone surrogates (all UnicodeEncodeError before, when the row or body was encoded)
    ("custom_event", ("wish",), {"key_value": ANN, "params": {BAD: "x"}}, "params['caf\\ud800e']"),
    ("custom_event", ("wish",), {"key_value": ANN, "params": {"p": BAD}}, "params['p']"),
    ("custom_event", ("wish",), {"key_value": ANN, "params": {"p": {"a": [BAD]}}}, "params['p']"),
    ("custom_event", ("wish",), {"key_value": ANN, "params": {"p": {BAD: 1}}}, "params['p']"),
    ("custom_event", (BAD,), {"key_value": ANN}, "event_type_key"),
    ("custom_event", ("wish",), {"key_value": BAD}, "key_value"),
    ("custom_event", ("wish",), {"key_value": ANN, "dedupe_key": BAD}, "dedupe_key"),
    ("logged_in", (ANN,), {"params": {"device": BAD}}, "params['device']"),
    ("logged_in", (ANN,), {"params": {BAD: "ios"}}, "params['caf\\ud800e']"),
    ("registration_started", (ANN,), {"params": {"p": BAD}}, "params['p']"),
    ("password_reset_requested", (ANN,), {"reset_url": f"https://s.io/{BAD}"}, "reset_url"),
    ("cart_updated", (BAD,), {"items": [item()], "email": ANN}, "cart_id"),
    ("cart_updated", ("c",), {"items": [item(name=BAD)], "email": ANN}, "items[0].name"),
    ("cart_updated", ("c",), {"items": [item(sku=BAD)], "email": ANN}, "items[0].sku"),
    ("cart_updated", ("c",), {"items": [item(brand=BAD)], "email": ANN}, "items[0].brand"),
    ("cart_updated", ("c",), {"items": [item(url=f"https://s.io/{BAD}")]}, "items[0].url"),
    ("cart_updated", ("c",), {"items": [item(tags={"t": BAD})]}, "items[0].tags['t']"),
    ("cart_updated", ("c",), {"items": [item(tags={BAD: "x"})]}, "items[0].tags"),
    ("cart_updated", ("c",), {"items": [item()], "visitor_id": BAD}, "visitor_id"),
    ("product_viewed", (), {"item": item(), "visitor_id": BAD}, "visitor_id"),
    ("identify", (BAD, ANN), {}, "visitor_id"),
    ("order_placed", (BAD,), {"email": ANN, "items": [item()]}, "order_id"),
    ("order_status_changed", ("o-1",), {"status": BAD, "email": ANN}, "status"),
    ("contact_upserted", (ANN,), {"first_name": BAD}, "first_name"),
    ("contact_upserted", (ANN,), {"fields": {10003: BAD}}, "fields[10003]"),
    # a lone surrogate in an email was already refused (email_validator): kept as a guard
    ("opted_out", (f"{BAD}@example.com",), {}, "email"),
    # nesting 2,000 deep (RecursionError before)
    ("custom_event", ("wish",), {"key_value": ANN, "params": {"p": nested(2000)}}, "params['p']"),
    ("custom_event", ("w",), {"key_value": ANN, "params": {"p": [nested(40)]}}, "params['p']"),
    # whole numbers of 5,000 digits (ValueError: Exceeds the limit (4300 digits) before)
    ("custom_event", ("wish",), {"key_value": ANN, "params": {"p": HUGE}}, "params['p']"),
    ("logged_in", (ANN,), {"params": {"visits": HUGE}}, "params['visits']"),
    ("registration_started", (ANN,), {"params": {"visits": HUGE}}, "params['visits']"),
    ("cart_updated", (HUGE,), {"items": [item()], "email": ANN}, "cart_id"),
    ("cart_updated", ("c",), {"items": [item(quantity=HUGE)]}, "items[0].quantity"),
    ("cart_updated", ("c",), {"items": [item(price=HUGE)]}, "items[0].price"),
    ("cart_updated", ("c",), {"items": [item(tags={"size": HUGE})]}, "items[0].tags['size']"),
    ("cart_updated", ("c",), {"items": [item()], "visitor_id": HUGE}, "visitor_id"),
    ("product_viewed", (), {"item": item(quantity=HUGE), "email": ANN}, "item.quantity"),
    ("order_placed", (HUGE,), {"email": ANN, "items": [item()]}, "order_id"),
    ("order_placed", ("o",), {"email": ANN, "items": [item()], "total": HUGE}, "total"),
    ("order_placed", ("o",), {"email": ANN, "items": [item()], "cart_id": HUGE}, "cart_id"),
    ("order_status_changed", (HUGE,), {"status": "SHIPPED", "email": ANN}, "order_id"),
    ("contact_upserted", (ANN,), {"fields": {10002: HUGE}}, "fields[10002]"),
    ("contact_upserted", (ANN,), {"fields": {10003: HUGE}}, "fields[10003]"),
    ("contact_upserted", (ANN,), {"fields": {10001: HUGE}}, "fields[10001]"),
    ("contact_upserted", (ANN,), {"fields": {10004: HUGE}}, "fields[10004]"),
    ("contact_upserted", (ANN,), {"fields": {HUGE: "x"}}, "fields[<a whole number of a…]"),
    ("contact_upserted", (ANN,), {"fields": {"1" * 25: "x"}}, f"fields[{'1' * 20}…]"),
    ("contact_upserted", (ANN,), {"created": HUGE}, "created"),
]


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "field"),
    CASES,
    ids=[f"{i}-{case[0]}-{case[3]}" for i, case in enumerate(CASES)],
)
def test_hostile_input_is_a_validation_error_naming_the_field(
    hooks: Tracker, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        getattr(hooks, method)(*args, **kwargs)
    assert caught.value.field == field
    message = str(caught.value)
    message.encode("utf-8")  # printable and loggable as is
    assert len(message) <= 200, message
    with hooks.engine.connect() as conn:
        assert all(
            conn.execute(select(func.count()).select_from(t)).scalar_one() == 0
            for t in metadata.sorted_tables
        )


@pytest.mark.parametrize(
    "value",
    ["1e999999999", "-1E+999999999", "1e-999999999", Decimal("1e999999999"), "9" * 5000, 10**31],
    ids=["1e999999999", "-1E+999999999", "1e-999999999", "Decimal", "5000 nines", "10**31"],
)
def test_a_number_field_is_bounded_before_it_is_written_out(hooks: Tracker, value: Any) -> None:
    """Before, ``"1e999999999"`` passed the number check and was expanded to a billion digits
    (13 s, 3.9 GB) before the event size check refused it."""
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as caught:
            hooks.contact_upserted(ANN, fields={10002: value})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.field == "fields[10002]"
    assert "is a number field" in caught.value.rule
    assert peak < 1_000_000, peak


@pytest.mark.parametrize("value", ["-12.5", "1e5", Decimal("0.001"), 42, " 7 "])
def test_a_number_field_in_bounds_is_still_sent(hooks: Tracker, value: Any) -> None:
    hooks.contact_upserted(ANN, fields={10002: value})


@pytest.mark.parametrize(
    ("kwargs", "field", "bad"),
    [
        ({"fields": {10002: "x" * 10_000}}, "fields[10002]", "x"),
        ({"fields": {10001: "y" * 10_000}}, "fields[10001]", "y"),
        ({"fields": {10004: "z" * 10_000}}, "fields[10004]", "z"),
        ({"phone": "+1" + "5" * 38}, "phone", "5"),
    ],
)
def test_an_error_quotes_at_most_80_characters_of_the_value(
    hooks: Tracker, kwargs: dict[str, Any], field: str, bad: str
) -> None:
    """Before, a 10,000-character number field was quoted whole in the error."""
    with pytest.raises(ValidationError) as caught:
        hooks.contact_upserted(ANN, **kwargs)
    assert caught.value.field == field
    assert bad * 81 not in str(caught.value)


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([item(price="9" * 5000)], "items[0].price"),
        ([item(price="1e999999999")], "items[0].price"),
        ([item(price=Decimal("1e999999999"))], "items[0].price"),
        ([{"name": "Mug", "price": 1, "x" * 5000: 1}], "items[0]." + "x" * 40),
        ([{"name": "Mug", "price": 1, 7: 1, "colour": "red"}], "items[0].7"),
    ],
)
def test_item_errors_stay_short(hooks: Tracker, items: list[Any], field: str) -> None:
    """Before, a 5,000-digit price was quoted whole, and a dict with a text key and a number
    key besides the Item fields raised ``TypeError`` from sorting them."""
    with pytest.raises(ValidationError) as caught:
        hooks.cart_updated("c", items=items, email=ANN)
    assert caught.value.field == field
    assert len(str(caught.value)) <= 200

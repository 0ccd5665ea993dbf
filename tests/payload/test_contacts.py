"""Contact data is checked before anything is queued, and no capture input escapes the rules.

The platform silently ignores a whole contact when one value is wrong, so names, phones and
additional fields are refused at capture with an error naming the field and the rule. The
hypothesis test at the end drives every capture method of :class:`Tracker` with arbitrary input:
each call either stores what passes the platform's rules or raises :class:`ValidationError`,
and never leaves a row half-written.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from shop_events import Item, Settings, Tracker, ValidationError
from shop_events.abandonment.flows import Step, flows
from shop_events.capture.accounts import AccountHooks
from shop_events.capture.browse import BrowseHooks
from shop_events.capture.carts import CartHooks
from shop_events.capture.orders import OrderHooks
from shop_events.payload.orders_api import ORDERS_API_PATH
from shop_events.payload.validation import FORBIDDEN_KEY_CHARS, quoted
from shop_events.storage.tables import metadata, outbox
from sqlalchemy import delete, func, select

from tests.support import API_KEY, SettingsFactory

ANN = "ann@example.com"
SCHEMA = {"10001": "date", "10002": "number", "10003": "text", "10004": "bool"}


def queued(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


def params_of(row: Any) -> dict[str, Any]:
    return {p["name"]: p["value"] for p in json.loads(row.body)["params"]}


@pytest.fixture
def contacts_tracker(make_settings: SettingsFactory) -> Iterator[Tracker]:
    """A tracker with a contact field schema; phones need ``+`` (no default region)."""
    tracker = Tracker(make_settings(contacts={"fields": SCHEMA}))
    tracker.migrate()
    yield tracker
    tracker.shutdown()
    tracker.engine.dispose()


def refused(tracker: Tracker, field: str, rule: str, **kwargs: Any) -> ValidationError:
    """The call is refused naming ``field`` with ``rule`` in its text, and queues nothing."""
    before = len(queued(tracker))
    with pytest.raises(ValidationError) as caught:
        tracker.contact_upserted(ANN, **kwargs)
    assert caught.value.field == field
    assert rule in caught.value.rule, caught.value.rule
    assert str(caught.value) == f"{field}: {caught.value.rule}"
    assert len(queued(tracker)) == before
    return caught.value


# ------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_names_up_to_name_max_are_kept_longer_ones_refused(
    contacts_tracker: Tracker, field: str
) -> None:
    refused(contacts_tracker, field, "at most 40 characters, got 41", **{field: "A" * 41})
    refused(contacts_tracker, field, "must not be empty", **{field: "   "})
    refused(contacts_tracker, field, "must be a string", **{field: 42})
    contacts_tracker.contact_upserted(ANN, **{field: "Å" * 40})
    contacts_tracker.contact_upserted(ANN, **{field: " Ann "})
    param = {"first_name": "firstName", "last_name": "lastName"}[field]
    assert [params_of(row)[param] for row in queued(contacts_tracker)] == ["Å" * 40, "Ann"]


def test_name_max_is_configurable(make_settings: SettingsFactory) -> None:
    tracker = Tracker(make_settings(contacts={"name_max": 60}))
    tracker.migrate()
    try:
        tracker.contact_upserted(ANN, first_name="B" * 60, last_name="C" * 60)
        refused(tracker, "last_name", "at most 60 characters, got 61", last_name="C" * 61)
        assert len(queued(tracker)) == 1
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


# ----------------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    ("phone", "digits"),
    [
        ("+1-541-754-3010", "15417543010"),
        ("+380955547708", "380955547708"),
        ("+380 (95) 554-77-08", "380955547708"),
        ("+44 20 7946 0958", "442079460958"),
    ],
)
def test_international_phones_are_sent_as_digits(
    contacts_tracker: Tracker, phone: str, digits: str
) -> None:
    contacts_tracker.contact_upserted(ANN, phone=phone)
    [row] = queued(contacts_tracker)
    assert params_of(row)["phone"] == digits


def test_local_phone_needs_a_default_region(
    contacts_tracker: Tracker, make_settings: SettingsFactory
) -> None:
    error = refused(contacts_tracker, "phone", "is not a phone number", phone="0955547708")
    assert "contacts.default_region" in error.rule  # says how to fix it

    tracker = Tracker(make_settings(contacts={"default_region": "UA"}))
    try:
        tracker.contact_upserted(ANN, phone="0955547708")
        tracker.contact_upserted("bob@example.com", phone="+1-541-754-3010")  # + still wins
        assert [params_of(r)["phone"] for r in queued(tracker)] == [
            "380955547708",
            "15417543010",
        ]
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


@pytest.mark.parametrize(
    ("phone", "rule"),
    [
        ("+1-000-000-0000", "not a valid phone number"),
        ("+380 12", "not a valid phone number"),
        ("+999 1234 5678", "is not a phone number"),
        ("call me maybe", "is not a phone number"),
        ("", "must not be empty"),
        ("+" + "1" * 40, "at most 40 characters"),
        (380955547708, "must be a string"),
    ],
)
def test_invalid_phones_are_refused(contacts_tracker: Tracker, phone: Any, rule: str) -> None:
    refused(contacts_tracker, "phone", rule, phone=phone)


# ---------------------------------------------------------------------- additional fields


@pytest.mark.parametrize(
    ("fields", "inputs"),
    [
        ({10001: "2020-11-23"}, [(10001, "2020-11-23")]),
        ({"10001": dt.date(2020, 11, 23)}, [(10001, "2020-11-23")]),
        (
            {10002: 42, 10003: "gold", 10004: True},
            [(10002, "42"), (10003, "gold"), (10004, "true")],
        ),
        ({10002: "3.50"}, [(10002, "3.50")]),
        ({10002: Decimal("-7.25")}, [(10002, "-7.25")]),
        ({10004: " FALSE "}, [(10004, "false")]),
        ({10003: 12345}, [(10003, "12345")]),
    ],
)
def test_fields_are_typed_by_the_schema(
    contacts_tracker: Tracker, fields: dict[Any, Any], inputs: list[tuple[int, str]]
) -> None:
    contacts_tracker.contact_upserted(ANN, fields=fields)
    [row] = queued(contacts_tracker)
    profile = json.loads(params_of(row)["json"])
    assert profile == {"profileInputs": [{"profileInputId": i, "value": v} for i, v in inputs]}


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({10001: "23.11.2020"}, "fields[10001]", "is a date field: expected YYYY-MM-DD"),
        ({10001: "2020-02-30"}, "fields[10001]", "is a date field"),
        ({10001: dt.datetime(2020, 11, 23, 10)}, "fields[10001]", "not a datetime"),
        ({10001: 20201123}, "fields[10001]", "is a date field"),
        ({10002: "twelve"}, "fields[10002]", "is a number field"),
        ({10002: "NaN"}, "fields[10002]", "is a number field"),
        ({10002: True}, "fields[10002]", "is a number field"),
        ({10003: ["a"]}, "fields[10003]", "is a text field"),
        ({10003: "x" * 2001}, "fields[10003]", "at most 2000 characters"),
        ({10004: "yes"}, "fields[10004]", "is a yes/no field"),
        ({10004: 1}, "fields[10004]", "is a yes/no field"),
        ({10099: "x"}, "fields[10099]", "is not declared in contacts.fields"),
        ({"abc": "x"}, "fields[abc]", "a field id is a whole number"),
        ({10001: "2020-11-23", 10002: "oops"}, "fields[10002]", "is a number field"),
    ],
)
def test_bad_fields_name_the_field_and_the_rule(
    contacts_tracker: Tracker, fields: dict[Any, Any], field: str, rule: str
) -> None:
    refused(contacts_tracker, field, rule, fields=fields)


def test_fields_must_be_a_mapping(contacts_tracker: Tracker) -> None:
    refused(contacts_tracker, "fields", "must be a mapping", fields=[(10001, "2020-11-23")])


def test_without_a_schema_any_field_id_is_sent_as_text(
    make_settings: SettingsFactory,
) -> None:
    tracker = Tracker(make_settings())
    tracker.migrate()
    try:
        tracker.contact_upserted(ANN, fields={10099: "anything", "10100": 7})
        profile = json.loads(params_of(queued(tracker)[0])["json"])
        assert profile["profileInputs"] == [
            {"profileInputId": 10099, "value": "anything"},
            {"profileInputId": 10100, "value": "7"},
        ]
        refused(tracker, "fields[x1]", "a field id is a whole number", fields={"x1": "v"})
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def test_field_ids_are_ascii_digits(make_settings: SettingsFactory) -> None:
    tracker = Tracker(make_settings())  # no schema: any whole number is an id
    tracker.migrate()
    try:
        for field_id in ("²", "١٠٠٠١", "-1", "1.5", " "):
            refused(
                tracker,
                f"fields[{field_id.strip()}]",
                "a field id is a whole number",
                fields={field_id: "x"},
            )
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def test_one_bad_value_refuses_the_whole_contact(contacts_tracker: Tracker) -> None:
    refused(
        contacts_tracker,
        "phone",
        "not a valid phone number",
        first_name="Ann",
        last_name="Lee",
        phone="+1-000-000-0000",
        fields={10001: "2020-11-23"},
    )
    refused(contacts_tracker, "created", "must be True or False", created="yes")
    with pytest.raises(ValidationError) as caught:
        contacts_tracker.contact_upserted("ann@", first_name="Ann")
    assert caught.value.field == "email"
    assert "not a valid email address" in caught.value.rule
    assert queued(contacts_tracker) == []


def test_a_mistyped_keyword_is_a_type_error_not_an_event_param(contacts_tracker: Tracker) -> None:
    with pytest.raises(TypeError, match="sesion"):
        contacts_tracker.logged_in(ANN, sesion=None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="source"):
        contacts_tracker.registration_started(ANN, source="footer")  # type: ignore[call-arg]
    assert queued(contacts_tracker) == []


def test_account_hook_params_go_into_the_event(contacts_tracker: Tracker) -> None:
    contacts_tracker.logged_in(
        ANN, params={"device": "ios", "visits": 3, "spent": Decimal("9.50"), "vip": True}
    )
    [body] = [json.loads(row.body) for row in queued(contacts_tracker)]
    assert body["params"][1:] == [
        {"name": "device", "value": "ios"},
        {"name": "visits", "value": "3"},
        {"name": "spent", "value": "9.50"},
        {"name": "vip", "value": "true"},
    ]


# ------------------------------------------------------- inputs the fuzzing below turned up


@pytest.mark.parametrize(
    ("method", "kwargs", "field"),
    [
        ("custom_event", {"params": {"p": {"a": Decimal("1.5")}}}, "params['p']"),
        ("custom_event", {"params": {"p": [float("nan")]}}, "params['p']"),
        ("custom_event", {"params": {"p": {(1, 2): "tuple key"}}}, "params['p']"),
        ("registration_started", {"params": {"p": [Decimal("Infinity")]}}, "params['p']"),
        ("logged_in", {"params": {"p": {"when": dt.date(2020, 1, 1)}}}, "params['p']"),
        ("logged_in", {"params": {"p": 1.5}}, "params['p']"),
        ("password_changed", {"params": "device=ios"}, "params"),
        ("custom_event", {"params": "not a mapping"}, "params"),
        ("custom_event", {"params": ["a", "b"]}, "params"),
        ("logged_in", {"user_agent": 42}, "user_agent"),
        ("cart_updated", {"user_agent": b"Googlebot"}, "user_agent"),
        ("order_placed", {"status": "S" * 65}, "status"),  # the column holds 64 (PostgreSQL)
        ("order_placed", {"status": "ß" * 40}, "status"),  # 80 characters once upper-cased
    ],
)
def test_odd_input_is_refused_with_a_validation_error(
    contacts_tracker: Tracker, method: str, kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, tuple[Any, ...]] = {
        "custom_event": ("wishlist",),
        "cart_updated": ("cart-1",),
        "order_placed": ("order-1",),
    }
    required: dict[str, dict[str, Any]] = {
        "custom_event": {"key_value": ANN},
        "cart_updated": {"items": [Item(name="A", price=1)], "email": ANN},
        "order_placed": {"email": ANN, "items": [Item(name="A", price=1)]},
    }
    with pytest.raises(ValidationError) as caught:
        getattr(contacts_tracker, method)(
            *args.get(method, (ANN,)), **required.get(method, {}), **kwargs
        )
    assert caught.value.field == field
    with contacts_tracker.engine.connect() as conn:
        assert all(
            conn.execute(select(func.count()).select_from(t)).scalar_one() == 0
            for t in metadata.sorted_tables
        )


# ------------------------------------------------------------------ every method, any input
#
# SQLite only: the database file is reset before every example.

RESERVED = {"self", "email", "user_agent", "session", "connection", "reset_url"}
"""Keyword names of the methods themselves: Python, not the plugin, refuses those."""

KNOWN_EMAILS = [ANN, "Bob@Example.COM", "shopper@merchant-test.example", "x@y.io"]
KNOWN_IDS = ["cart-1", "order-1", "v-1", "order-2", "a" * 255]

# Hostile values, drawn for every argument of every hook: text with a lone surrogate (not
# encodable as UTF-8), lists nested far deeper than any event, whole numbers beyond the 4300
# digits Python writes out, and exponents that would expand to gigabytes of digits.
surrogate_text = st.builds(
    lambda head, char, tail: head + char + tail,
    st.text(max_size=8),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=8),
)
huge_ints = st.sampled_from([5000, -5000, 4301, 300]).map(  # digits; built here, since a
    lambda digits: 10 ** abs(digits) * (1 if digits > 0 else -1) + 7  # repr() refuses them
)
huge_exponents = st.sampled_from(
    ["1e999999999", "-1E+999999999", "1e-999999999", Decimal("1e999999999"), "9" * 5000]
)


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if depth % 2 else {"k": value}
    return value


deep = st.integers(min_value=33, max_value=2000).map(_nest)
hostile = st.one_of(surrogate_text, huge_ints, huge_exponents, deep)

text = st.one_of(st.text(max_size=30), surrogate_text)
long_text = st.text(min_size=90, max_size=320)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.decimals(), text, huge_ints
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
anything = st.one_of(json_like, st.dates(), st.datetimes(), long_text, hostile)
"""Any value at all: what a wrong argument might be."""

# Plausible values (most pass, some are edge cases); one argument of a call may be replaced
# by `anything`, so both the happy paths and the refusals are driven.
prices = st.one_of(
    st.integers(min_value=0),
    st.decimals(min_value=0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0).map(str),
    st.integers(min_value=0, max_value=10**6).map(lambda n: f"{n / 100:.2f}"),
    st.sampled_from(["1e400", "0.000000001", "1E+3"]),
    huge_ints.filter(lambda n: n > 0),
    huge_exponents,
)
urls = st.one_of(
    st.builds(lambda p: f"https://shop.example/{p}", st.text("abc/-_.?=&%123", max_size=30)),
    st.sampled_from(["http://x.io/a?b=c", "ftp://x.io/", "/relative", "https://", "https://a b"]),
    surrogate_text.map(lambda t: f"https://shop.example/{t}"),
)
items = st.builds(
    Item,
    name=st.one_of(st.text(min_size=1, max_size=40), long_text),
    price=prices,
    url=st.none() | urls,
    imageurl=st.none() | urls,
    brand=st.none() | text,
    quantity=st.none() | st.integers(min_value=0, max_value=10**6) | huge_ints,
    sku=st.none() | text,
    tags=st.dictionaries(
        st.text(min_size=1, max_size=20) | surrogate_text, text | prices | huge_ints, max_size=3
    ),
)
items_arg = st.lists(items, max_size=4)
emails = st.one_of(
    st.sampled_from(KNOWN_EMAILS), st.emails(), surrogate_text.map(lambda t: f"a{t}@example.com")
)
ids = st.one_of(
    st.sampled_from(KNOWN_IDS),
    st.text(min_size=1, max_size=40),
    st.integers(),
    surrogate_text,
    huge_ints,
)
agents = st.one_of(st.none(), text, st.sampled_from(["Googlebot/2.1", "Mozilla/5.0 Safari"]))
statuses = st.one_of(
    st.sampled_from(["DELIVERED", "cancelled", "shipped", "ß" * 40, "S" * 65]),
    st.text(min_size=1, max_size=20),
    surrogate_text,
)
param_names = st.one_of(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["items", "order_id", "a" * 101]),
    surrogate_text,
).filter(lambda n: n not in RESERVED)
param_values = st.one_of(text, st.integers(), prices, json_like, long_text, hostile)
kwarg_params = st.dictionaries(param_names, param_values, max_size=4)
field_ids = st.one_of(
    st.sampled_from([10001, 10002, 10003, 10004, "10001", 99999, "abc", True, "²", "١٠٠٠١"]),
    st.integers(),
    text,
    huge_ints,
)
field_values = st.one_of(
    hostile,
    st.dates(),
    st.dates().map(str),
    st.integers(),
    prices,
    st.booleans(),
    text,
    st.sampled_from(["true", "False", "2020-11-23", "23.11.2020", "1e5", "NaN"]),
)
fields = st.one_of(st.none(), st.dictionaries(field_ids, field_values, max_size=3))
phones = st.one_of(
    st.none(),
    st.sampled_from(["+1-541-754-3010", "+380955547708", "0955547708", "+1-000-000-0000"]),
    text,
)


@st.composite
def _call(
    draw: st.DrawFn,
    name: str,
    args: tuple[st.SearchStrategy[Any], ...],
    kwargs: dict[str, st.SearchStrategy[Any]],
    params: st.SearchStrategy[dict[str, Any]],
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    values = list(draw(st.tuples(*args)))
    named = draw(st.fixed_dictionaries(kwargs))
    slots: list[int | str] = [*range(len(values)), *named]
    if slots and draw(st.booleans()):  # half the calls get one wrong argument
        slot = draw(st.sampled_from(slots))
        wrong = draw(anything)
        if isinstance(slot, int):
            values[slot] = wrong
        else:
            named[slot] = wrong
    return name, tuple(values), {**draw(params), **named}


def call(name: str, *args: st.SearchStrategy[Any], **kwargs: st.SearchStrategy[Any]) -> Any:
    """A strategy of ``(method name, args, kwargs)``; ``_params`` become ``**params``."""
    params = kwargs.pop("_params", st.just({}))
    return _call(name, args, kwargs, params)


CALLS = {
    "cart_updated": call(
        "cart_updated",
        ids,
        items=items_arg,
        email=st.none() | emails,
        visitor_id=st.none() | ids,
        currency=st.none() | st.sampled_from(["EUR", "eur", "EURO"]),
        restore_url=st.none() | urls,
        user_agent=agents,
    ),
    "cart_cleared": call("cart_cleared", ids),
    "cart_rejected": call("cart_rejected", ids),
    "product_viewed": call(
        "product_viewed",
        item=items,
        email=st.none() | emails,
        visitor_id=st.none() | ids,
        user_agent=agents,
    ),
    "identify": call("identify", ids, emails),
    "registration_started": call(
        "registration_started", emails, user_agent=agents, params=st.none() | kwarg_params
    ),
    "registration_completed": call("registration_completed", emails),
    "order_placed": call(
        "order_placed",
        ids,
        email=emails,
        items=items_arg,
        total=st.none() | prices,
        currency=st.none() | st.sampled_from(["EUR", "USD"]),
        cart_id=st.none() | ids,
        status=statuses,
        user_agent=agents,
    ),
    "order_status_changed": call(
        "order_status_changed", ids, status=statuses, email=st.none() | emails
    ),
    "logged_in": call("logged_in", emails, user_agent=agents, params=st.none() | kwarg_params),
    "password_changed": call("password_changed", emails, params=st.none() | kwarg_params),
    "password_reset_requested": call(
        "password_reset_requested", emails, reset_url=urls, params=st.none() | kwarg_params
    ),
    "contact_upserted": call(
        "contact_upserted",
        emails,
        first_name=st.none() | text | long_text,
        last_name=st.none() | text,
        phone=phones,
        fields=fields,
        created=st.booleans(),
    ),
    "opted_out": call("opted_out", emails),
    "opted_in": call("opted_in", emails),
    "custom_event": call(
        "custom_event",
        st.one_of(st.sampled_from(["wishlist", "a,b", "x" * 101]), text),
        key_value=st.one_of(emails, text, long_text),
        params=st.none() | st.dictionaries(param_names, param_values, max_size=4),
        dedupe_key=st.none() | text | long_text,
        marketing=st.booleans(),
    ),
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """JSON as the platform parses it: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=_refuse_constant)


PLUGIN_NESTED = {
    "items": {
        "abandoned_cart",
        "abandoned_browse",
        "orderCreated",
        "orderUpdated",
        "orderDelivered",
        "orderCancelled",
    },
    "json": {"create_contact", "update_contact"},
}
"""The plugin's own nested params, by the event types that carry them."""


def check_event_body(body: str, max_bytes: int, version: str, nested: set[str]) -> None:
    """The platform's rules on one stored Generate event body.

    ``nested`` names the params the caller gave as dicts or lists: in v1 their serialized
    value must be JSON the platform can read.
    """
    assert len(body.encode("utf-8")) <= max_bytes
    event = strict_json(body)
    assert set(event) == {"eventTypeKey", "keyValue", "params"}
    key = event["eventTypeKey"]
    assert isinstance(key, str) and key.strip() and len(key) <= 100
    assert not set(key) & FORBIDDEN_KEY_CHARS, key
    key_value = event["keyValue"]
    assert isinstance(key_value, str) and key_value.strip() and len(key_value) <= 300
    names = [p["name"] for p in event["params"]]
    assert len(names) == len(set(names)), names
    for param in event["params"]:
        assert set(param) == {"name", "value"}
        assert isinstance(param["name"], str) and 0 < len(param["name"]) <= 100
        value = param["value"]
        if version == "v1":
            assert isinstance(value, str), param
        own = PLUGIN_NESTED.get(param["name"], set())
        if (key in own or param["name"] in nested) and isinstance(value, str):
            value = strict_json(value)
        if key in own:
            assert isinstance(value, dict)
            if param["name"] == "items":
                array = value["array"]
                assert all(isinstance(v, str) for item in array for v in item.values())


def check_orders_body(body: str) -> None:
    order = strict_json(body)
    assert isinstance(order["externalOrderId"], str) and order["externalOrderId"]
    assert isinstance(order["items"], list)


def nested_params(name: str, kwargs: dict[str, Any]) -> set[str]:
    """Names of the params a call passes as nested JSON (dicts or lists)."""
    if name == "custom_event" or name in {
        "registration_started",
        "logged_in",
        "password_changed",
        "password_reset_requested",
    }:
        given = kwargs.get("params")
        pairs = given.items() if isinstance(given, dict) else []
    else:
        return set()
    return {str(k) for k, v in pairs if isinstance(v, dict | list)}


def snapshot(tracker: Tracker) -> dict[str, list[tuple[Any, ...]]]:
    with tracker.engine.connect() as conn:
        return {
            table.name: sorted(map(tuple, conn.execute(select(table))), key=repr)
            for table in metadata.sorted_tables
        }


FLOW_TABLES = {"cart": "carts", "browse": "browses", "registration": "registrations"}


def check_deferred_events(tracker: Tracker, nested: set[str]) -> None:
    """The events the scanner would build from the stored activity pass the same rules."""
    settings = tracker.settings
    with tracker.engine.connect() as conn:
        for flow in flows(settings):
            table = metadata.tables[f"shop_events_{FLOW_TABLES[flow.subject]}"]
            for row in conn.execute(select(table)):
                if flow.contact(row):
                    event = flow.event(row, Step(number=1, now=dt.datetime.now(dt.UTC)))
                    check_event_body(
                        event.body, settings.api.max_event_bytes, settings.api.version, nested
                    )


@pytest.fixture
def fuzz_tracker(tmp_path: Path) -> Iterator[Tracker]:
    """SQLite only: every example starts from empty tables of one migrated file."""
    settings = Settings.load(
        {
            "api": {"base_url": "http://127.0.0.1:9/api", "key": API_KEY},
            "database": {"url": f"sqlite:///{tmp_path / 'fuzz.db'}"},
            "scheduler": {"enabled": False},
            "contacts": {"fields": SCHEMA, "default_region": "UA"},
            "orders": {"api": True},
            "bots": {"emails": ["*@merchant-test.*"]},
        }
    )
    tracker = Tracker(settings)
    tracker.migrate()
    yield tracker
    tracker.shutdown()
    tracker.engine.dispose()


def test_the_fuzzed_calls_cover_every_capture_method() -> None:
    captures = {
        name
        for mixin in (CartHooks, BrowseHooks, OrderHooks, AccountHooks)
        for name in vars(mixin)
        if not name.startswith("_")
    }
    assert captures | {"custom_event"} == set(CALLS)


@hypothesis.settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(calls=st.lists(st.one_of(*CALLS.values()), min_size=1, max_size=4))
def test_every_capture_method_stores_valid_events_or_raises_validation_error(
    fuzz_tracker: Tracker, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> None:
    tracker = fuzz_tracker
    with tracker.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))
    api = tracker.settings.api
    nested: set[str] = set()
    for name, args, kwargs in calls:
        nested |= nested_params(name, kwargs)
        before = snapshot(tracker)
        with tracker.engine.connect() as conn:
            last_id = conn.execute(select(func.coalesce(func.max(outbox.c.id), 0))).scalar_one()
        try:
            getattr(tracker, name)(*args, **kwargs)
        except ValidationError as exc:
            hypothesis.event(f"{name}: refused")
            assert exc.field and exc.rule, exc
            message = str(exc)
            message.encode("utf-8")  # no lone surrogate copied into the message
            assert len(message) <= 300, message  # at most ~80 characters of any value
            assert snapshot(tracker) == before, f"{name} half-wrote rows before refusing"
            continue
        except Exception as exc:  # the point: nothing but ValidationError
            raise AssertionError(
                f"{name}(*{quoted(args, 2000)}, **{quoted(kwargs, 2000)}) raised "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
        hypothesis.event(f"{name}: accepted")
        with tracker.engine.connect() as conn:
            new = list(conn.execute(select(outbox).where(outbox.c.id > last_id)))
        for row in new:
            assert len(row.dedupe_key) <= 400 and len(row.key_value) <= 300
            if row.api_path == ORDERS_API_PATH:
                check_orders_body(row.body)
            else:
                assert row.api_path == api.event_path
                check_event_body(row.body, api.max_event_bytes, api.version, nested)
        check_deferred_events(tracker, nested)


# ------------------------------------------- every argument of every hook, each hostile class

BASELINE: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "cart_updated": (("cart-1",), {"items": [Item(name="A", price=1)], "email": ANN}),
    "cart_cleared": (("cart-1",), {}),
    "cart_rejected": (("cart-1",), {}),
    "product_viewed": ((), {"item": Item(name="A", price=1), "visitor_id": "v-1"}),
    "identify": (("v-1", ANN), {}),
    "registration_started": ((ANN,), {"params": {"source": "footer"}}),
    "registration_completed": ((ANN,), {}),
    "order_placed": (("order-1",), {"email": ANN, "items": [Item(name="A", price=1)]}),
    "order_status_changed": (("order-1",), {"status": "SHIPPED", "email": ANN}),
    "logged_in": ((ANN,), {"params": {"device": "ios"}}),
    "password_changed": ((ANN,), {"params": {"device": "ios"}}),
    "password_reset_requested": ((ANN,), {"reset_url": "https://shop.example/r"}),
    "contact_upserted": ((ANN,), {"first_name": "Ann", "fields": {10002: "1", 10003: "t"}}),
    "opted_out": ((ANN,), {}),
    "opted_in": ((ANN,), {}),
    "custom_event": (("wishlist",), {"key_value": ANN, "params": {"p": "v"}}),
}
"""One valid call of each hook; each argument in turn is replaced by a hostile value."""

HOSTILE: dict[str, Any] = {
    "surrogate": "caf\ud800e",
    "huge int": 10**5000,
    "huge exponent": "1e999999999",
    "nested 2000": _nest(2000),
}


def _slots(method: str) -> list[str | int]:
    args, kwargs = BASELINE[method]
    inner: list[str | int] = []
    for name, value in kwargs.items():
        if isinstance(value, dict):  # params and fields: each value, and a key
            inner += [f"{name}.{key}" for key in value] + [f"{name}.<key>"]
        elif name == "items" or name == "item":
            inner += [f"{name}.{field}" for field in ("name", "price", "quantity", "sku", "tags")]
    return [*range(len(args)), *kwargs, *inner]


def _with(method: str, slot: str | int, bad: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = BASELINE[method]
    values, named = (
        list(args),
        {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()},
    )
    if isinstance(slot, int):
        values[slot] = bad
    elif "." not in slot:
        named[slot] = bad
    else:
        name, key = slot.split(".", 1)
        if name in ("items", "item"):
            fields = {"name": "A", "price": 1, key: {"t": bad} if key == "tags" else bad}
            named[name] = [Item(**fields)] if name == "items" else Item(**fields)
        elif key == "<key>":
            named[name][bad if isinstance(bad, str | int) else "x"] = "v"
        else:
            named[name][int(key) if name == "fields" else key] = bad
    return tuple(values), named


HOSTILE_CALLS = [
    (method, slot, kind) for method in BASELINE for slot in _slots(method) for kind in HOSTILE
]


def test_the_hostile_calls_cover_every_capture_method() -> None:
    assert set(BASELINE) == set(CALLS)


@pytest.mark.parametrize(
    ("method", "slot", "kind"),
    HOSTILE_CALLS,
    ids=[f"{method}-{slot}-{kind}" for method, slot, kind in HOSTILE_CALLS],
)
def test_a_hostile_value_in_any_argument_is_refused_or_stored_valid(
    fuzz_tracker: Tracker, method: str, slot: str | int, kind: str
) -> None:
    """Lone surrogates, 2,000-deep nesting, 5,000-digit numbers and huge exponents in each
    argument of each hook: a ValidationError naming a field, or a valid stored event."""
    tracker = fuzz_tracker
    args, kwargs = _with(method, slot, HOSTILE[kind])
    try:
        getattr(tracker, method)(*args, **kwargs)
    except ValidationError as exc:
        assert exc.field and exc.rule
        assert len(str(exc)) <= 300 and str(exc).encode("utf-8")
        return
    api = tracker.settings.api
    for row in queued(tracker):
        if row.api_path == ORDERS_API_PATH:
            check_orders_body(row.body)
        else:
            check_event_body(row.body, api.max_event_bytes, api.version, set())
    check_deferred_events(tracker, set())

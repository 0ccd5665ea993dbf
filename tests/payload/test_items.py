"""Items and event bodies: the seed's exact serialization, prices, field names, size fitting."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from shop_events import Item, Settings, ValidationError
from shop_events.payload.events import build_body, build_items_event, encode_value, fit_items
from shop_events.payload.items import (
    canonical_items,
    items_param,
    items_total,
    price_text,
    serialize_items,
)
from shop_events.payload.validation import body_size, encode_body

from tests.support import DATA

SEED = DATA / "seed_generate_event.txt"
PRODUCT_URL = "https://www.cultbeauty.co.uk/olaplex-no-4-bond-maintenance-shampoo.html"
IMAGE_URL = "https://site.com/uploads/product/big/20161122/20161122_7zvb.jpg"


def seed_items_literal() -> str:
    """The ``items`` value of the seed's request sample, as the JSON string literal it shows."""
    text = SEED.read_text(encoding="utf-8")
    match = re.search(r'"value": ("\{\\"array\\".*?\}\]\}")', text)
    assert match, "the seed's items sample was not found"
    return match.group(1)


def seed_products() -> list[Item]:
    return [
        Item(
            name="Hair styler",
            price=Decimal("341"),
            url=PRODUCT_URL,
            imageurl=IMAGE_URL,
            brand="Le Petit Olivier",
            tags={"weight": "200", "oldprice": "467"},
        ),
        Item(
            name="Magnolia Nobile",
            price=2341,
            url=PRODUCT_URL,
            imageurl=IMAGE_URL,
            brand="Acqua Di Parma",
            tags={"weight": 100, "oldprice": "4467"},
        ),
    ]


def params_of(body: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p["value"] for p in body["params"]}


# ---------------------------------------------------------------------------- the seed


def test_v1_items_value_equals_the_seed_byte_for_byte() -> None:
    literal = seed_items_literal()
    expected = json.loads(literal)
    assert expected.startswith('{"array":[{"name":"Hair styler","price":"341",')
    value = encode_value(items_param(canonical_items(seed_products()), Settings().items), "v1")
    assert value == expected
    assert value.encode("utf-8") == expected.encode("utf-8")


def test_seed_event_body_carries_the_seed_string() -> None:
    body, dropped = build_items_event(
        "abandoned_cart",
        "site@en.net",
        [("email", "site@en.net")],
        canonical_items(seed_products()),
        [],
        Settings(),
    )
    assert dropped == 0
    # exactly the escaped string the seed shows, inside the sent bytes
    assert f'"value":{seed_items_literal()}' in body
    parsed = json.loads(body)
    assert parsed["eventTypeKey"] == "abandoned_cart"
    assert parsed["keyValue"] == "site@en.net"
    assert [p["name"] for p in parsed["params"]] == ["email", "items"]
    assert params_of(parsed)["email"] == "site@en.net"


def test_v2_items_are_a_real_json_object() -> None:
    settings = Settings().override(api={"version": "v2"})
    body, _ = build_items_event(
        "abandoned_cart",
        "site@en.net",
        [("email", "site@en.net")],
        canonical_items(seed_products()),
        [("total", "2682")],
        settings,
    )
    items = params_of(json.loads(body))["items"]
    assert isinstance(items, dict)
    assert items == json.loads(json.loads(seed_items_literal()))
    assert params_of(json.loads(body))["total"] == "2682"


# ----------------------------------------------------------------------------- prices


@pytest.mark.parametrize(
    ("price", "text"),
    [
        (Decimal("341"), "341"),
        (Decimal("23.50"), "23.50"),
        ("23.50", "23.50"),
        (" 7.25 ", "7.25"),
        (341, "341"),
        (0, "0"),
        (0.1, "0.1"),
        (19.99, "19.99"),
        (1.1 + 2.2, "3.3000000000000003"),  # the float given is exactly that; no extra noise
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
        (Decimal("1E+2"), "100"),
    ],
)
def test_price_text(price: Any, text: str) -> None:
    assert price_text(price, "price") == text
    assert canonical_items([Item(name="x", price=price)])[0]["price"] == text


@pytest.mark.parametrize(
    "price",
    [
        -1,
        Decimal("-0.01"),
        "-3",
        float("nan"),
        Decimal("NaN"),
        float("inf"),
        "abc",
        "",
        True,
        False,
        None,
        [1],
        b"12",
    ],
)
def test_bad_price_names_the_item(price: Any) -> None:
    items = [Item(name="ok", price=1), Item(name="bad", price=price)]
    with pytest.raises(ValidationError) as caught:
        canonical_items(items)
    assert caught.value.field == "items[1].price"
    assert str(caught.value).startswith("items[1].price: ")


def test_tag_numbers_use_price_rules() -> None:
    [row] = canonical_items([Item(name="x", price=1, tags={"w": Decimal("2.50"), "n": 3})])
    assert row["tags"] == {"w": "2.50", "n": "3"}
    with pytest.raises(ValidationError) as caught:
        canonical_items([Item(name="x", price=1, tags={"w": float("nan")})])
    assert caught.value.field == "items[0].tags['w']"


def test_items_total() -> None:
    rows = canonical_items(
        [
            Item(name="a", price="23.50", quantity=2),
            Item(name="b", price=0.1),
            {"name": "c", "price": 3},
        ]
    )
    assert items_total(rows) == "50.10"


# ---------------------------------------------------------------------- other item rules


def test_missing_name() -> None:
    with pytest.raises(ValidationError) as caught:
        canonical_items([{"price": 1}])
    assert caught.value.field == "items[0].name"
    with pytest.raises(ValidationError) as caught:
        canonical_items([Item(name="x", price=1), Item(name="  ", price=1)])
    assert caught.value.field == "items[1].name"


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("url", "ftp://shop/p/1"),
        ("url", "/p/1"),
        ("imageurl", "javascript:alert(1)"),
        ("imageurl", "https://shop/a b.jpg"),
    ],
)
def test_non_http_url(field: str, url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        canonical_items([Item(name="x", price=1, **{field: url})])
    assert caught.value.field == f"items[0].{field}"


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"name": "x", "price": 1, "colour": "red"}, "items[0].colour"),
        ({"name": "x", "price": 1, "quantity": 0}, "items[0].quantity"),
        ({"name": "x", "price": 1, "quantity": True}, "items[0].quantity"),
        ({"name": "x", "price": 1, "tags": ["a"]}, "items[0].tags"),
        ({"name": "x" * 501, "price": 1}, "items[0].name"),
        ("Hair styler", "items[0]"),
    ],
)
def test_other_item_errors_name_the_field(item: Any, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        canonical_items([item])
    assert caught.value.field == field


def test_items_must_be_a_list() -> None:
    with pytest.raises(ValidationError) as caught:
        canonical_items("Hair styler")
    assert caught.value.field == "items"


def test_field_names_configurable_and_case_kept() -> None:
    settings = Settings.load(
        {"items": {"imageurl": "ImageUrl", "name": "Title", "tag_prefix": "tag.", "sku": "SKU"}}
    )
    rows = serialize_items(
        canonical_items(
            [Item(name="x", price=1, imageurl="https://s/i.jpg", sku="A-1", tags={"Size": "M"})]
        ),
        settings.items,
    )
    assert rows == [
        {"Title": "x", "price": "1", "ImageUrl": "https://s/i.jpg", "SKU": "A-1", "tag.Size": "M"}
    ]
    body, _ = build_items_event(
        "abandoned_cart",
        "a@b.c",
        [],
        canonical_items([Item(name="x", price=1, imageurl="https://s/i.jpg")]),
        [],
        settings,
    )
    assert '\\"ImageUrl\\":\\"https://s/i.jpg\\"' in body
    assert "imageurl" not in body


def test_items_param_name_configurable() -> None:
    settings = Settings.load({"items": {"param": "products"}})
    body, _ = build_items_event(
        "abandoned_cart", "a@b.c", [], canonical_items([Item(name="x", price=1)]), [], settings
    )
    assert list(params_of(json.loads(body))) == ["products"]


# --------------------------------------------------------------------------- build_body


def test_build_body_shape_v1_and_v2() -> None:
    params = [("email", "a@b.c"), ("count", 3), ("price", Decimal("2.50")), ("json", {"a": [1]})]
    v1 = build_body("custom", "a@b.c", params, "v1")
    assert v1 == {
        "eventTypeKey": "custom",
        "keyValue": "a@b.c",
        "params": [
            {"name": "email", "value": "a@b.c"},
            {"name": "count", "value": "3"},
            {"name": "price", "value": "2.50"},
            {"name": "json", "value": '{"a":[1]}'},
        ],
    }
    v2 = build_body("custom", "a@b.c", params, "v2")
    assert v2["params"][3] == {"name": "json", "value": {"a": [1]}}


@pytest.mark.parametrize(
    ("event_type_key", "key_value", "params", "field"),
    [
        ("k" * 101, "a@b.c", [], "event_type_key"),
        ("", "a@b.c", [], "event_type_key"),
        ("cart?", "a@b.c", [], "event_type_key"),
        ("cart’s", "a@b.c", [], "event_type_key"),
        ("a>b", "a@b.c", [], "event_type_key"),
        ("ok", "k" * 301, [], "key_value"),
        ("ok", "", [], "key_value"),
        ("ok", "a@b.c", [("email", "x"), ("email", "y")], "params['email']"),
        ("ok", "a@b.c", [("n" * 101, "x")], f"params[{'n' * 80!r}…]"),  # quoted up to 80
        ("ok", "a@b.c", [("flag", True)], "params"),
        ("ok", "a@b.c", [("none", None)], "params"),
    ],
)
def test_build_body_rules_name_the_field(
    event_type_key: str, key_value: str, params: list[tuple[str, Any]], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        build_body(event_type_key, key_value, params, "v1")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_build_body_limits_are_inclusive() -> None:
    body = build_body("k" * 100, "v" * 300, [("n" * 100, "x")], "v1")
    assert len(body["eventTypeKey"]) == 100
    assert len(body["keyValue"]) == 300


# ----------------------------------------------------------------------------- fitting


def product(i: int, size: int = 200) -> Item:
    return Item(name=f"Product {i} " + "x" * size, price=i, url=f"https://shop/p/{i}")


def test_big_cart_is_cut_from_the_end() -> None:
    settings = Settings.load({"api": {"max_event_bytes": 4000}})
    items = canonical_items([product(i) for i in range(60)])
    body, dropped = build_items_event(
        "abandoned_cart", "a@b.c", [("email", "a@b.c")], items, [("cart_id", "c-1")], settings
    )
    assert 0 < dropped < 60
    assert len(body.encode("utf-8")) <= 4000
    parsed = json.loads(body)
    params = params_of(parsed)
    kept = json.loads(params["items"])["array"]
    assert len(kept) + dropped == 60
    assert [row["name"] for row in kept] == [item["name"] for item in items[: len(kept)]]
    assert params["items_dropped"] == str(dropped)
    assert [p["name"] for p in parsed["params"]] == ["email", "items", "items_dropped", "cart_id"]
    # one more product would not have fit
    bigger = Settings.load({"api": {"max_event_bytes": 4000}}).items
    one_more = build_body(
        "abandoned_cart",
        "a@b.c",
        [
            ("email", "a@b.c"),
            ("items", items_param(items[: len(kept) + 1], bigger)),
            ("items_dropped", str(dropped - 1)),
            ("cart_id", "c-1"),
        ],
        "v1",
    )
    assert body_size(one_more) > 4000


def test_small_cart_is_not_cut_and_has_no_dropped_param() -> None:
    body, dropped = build_items_event(
        "abandoned_cart", "a@b.c", [], canonical_items([product(1)]), [], Settings()
    )
    assert dropped == 0
    assert "items_dropped" not in params_of(json.loads(body))


def test_dropped_param_name_configurable() -> None:
    settings = Settings.load({"api": {"max_event_bytes": 1024}, "items": {"dropped_param": "more"}})
    body, dropped = build_items_event(
        "abandoned_cart",
        "a@b.c",
        [],
        canonical_items([product(i) for i in range(20)]),
        [],
        settings,
    )
    assert params_of(json.loads(body))["more"] == str(dropped)


def test_event_too_big_without_products_is_an_error() -> None:
    settings = Settings.load({"api": {"max_event_bytes": 1024}})
    with pytest.raises(ValidationError) as caught:
        build_items_event(
            "abandoned_cart",
            "a@b.c",
            [("note", "n" * 2000)],
            canonical_items([product(1)]),
            [],
            settings,
        )
    assert caught.value.field == "event"


def test_fit_items_uses_the_make_callback() -> None:
    calls: list[tuple[int, int]] = []

    def make(kept: Any, dropped: int) -> dict[str, Any]:
        calls.append((len(kept), dropped))
        return {"kept": ["x" * 100 for _ in kept], "dropped": dropped}

    items = [{"name": str(i), "price": "1"} for i in range(10)]
    body, dropped = fit_items(make, items, 550)
    assert body_size(body) <= 550
    assert len(body["kept"]) + dropped == 10
    assert body["dropped"] == dropped
    assert len(calls) < 10  # a binary search, not one try per product


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=80,
).filter(lambda s: s.strip() != "")
prices = st.one_of(
    st.integers(min_value=0, max_value=10**9),
    st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
)
products = st.builds(
    lambda name, price, brand: Item(name=name, price=price, brand=brand),
    names,
    prices,
    st.one_of(st.none(), names),
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(products, max_size=80),
    max_bytes=st.integers(min_value=1024, max_value=6000),
    version=st.sampled_from(["v1", "v2"]),
)
def test_fitted_body_property(items: list[Item], max_bytes: int, version: str) -> None:
    settings = Settings.load({"api": {"max_event_bytes": max_bytes, "version": version}})
    checked = canonical_items(items)
    body, dropped = build_items_event(
        "abandoned_cart", "a@b.c", [("email", "a@b.c")], checked, [("total", "1")], settings
    )
    assert len(body.encode("utf-8")) <= max_bytes
    assert encode_body(json.loads(body)) == body.encode("utf-8")  # sized as sent
    params = params_of(json.loads(body))
    value = params["items"]
    kept = (json.loads(value) if version == "v1" else value)["array"]
    assert len(kept) + dropped == len(items)
    assert kept == serialize_items(checked[: len(kept)], settings.items)  # a prefix, in order
    if dropped:
        assert params["items_dropped"] == str(dropped)
    else:
        assert "items_dropped" not in params

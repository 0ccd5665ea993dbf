"""Products in an event: :class:`Item`, its checks, and its serialization into ``items``.

A cart, an order or a browse keeps its products as *canonical* dicts (plain strings, tags in a
sub-dict). They become the API's ``{"array": [...]}`` with the field names of ``[items]``
settings only when an event is built, so renaming a field applies to everything not yet sent.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from .validation import check_host_id, check_text, check_url, decimal_text, label, quoted

if TYPE_CHECKING:  # settings are passed in; payload never loads them
    from ..config import ItemsSettings

CanonicalItem = dict[str, Any]
"""A checked product: ``name``, ``price`` and optional fields as strings, ``tags`` a dict."""

NAME_MAX = 500
QUANTITY_MAX = 1_000_000_000
TEXT_MAX = 1000
OPTIONAL_URLS = ("url", "imageurl")
OPTIONAL_TEXTS = ("brand", "sku")


@dataclasses.dataclass(frozen=True)
class Item:
    """One product as the shop describes it.

    ``price`` may be a ``Decimal``, ``int``, ``str`` or ``float``; it is sent as text without
    float noise (``Decimal("23.50")`` → ``"23.50"``). ``tags`` become ``tags_<name>`` fields.
    """

    name: str
    price: Decimal | int | str | float
    url: str | None = None
    imageurl: str | None = None
    brand: str | None = None
    quantity: int | None = None
    sku: str | None = None
    tags: Mapping[str, Decimal | int | str | float] = dataclasses.field(default_factory=dict)


ITEM_FIELDS = tuple(f.name for f in dataclasses.fields(Item))


def price_text(value: object, field: str) -> str:
    """A non-negative decimal number as text: ``341``, ``"23.50"``, ``Decimal("9.9")``.

    Bounded before any arithmetic (see :func:`~.validation.decimal_text`): at most 100
    characters of text, between 1e-30 and 1e30.
    """
    return decimal_text(value, field)


def _tag_text(value: object, field: str) -> str:
    if isinstance(value, str):
        return check_text(value, field, TEXT_MAX, required=False)
    return price_text(value, field)


def canonical_item(item: Item | Mapping[str, Any], field: str) -> CanonicalItem:
    """Check one product (an :class:`Item` or a dict with its field names)."""
    if isinstance(item, Item):
        data: dict[str, Any] = vars(item)
    elif isinstance(item, Mapping):
        data = dict(item)
        unknown = [key for key in data if key not in ITEM_FIELDS]
        if unknown:
            raise ValidationError(
                f"{field}.{label(unknown[0])}", "is not a field of Item (use tags for extras)"
            )
    else:
        raise ValidationError(field, f"must be an Item or a dict, got {type(item).__name__}")
    if data.get("name") is None:
        raise ValidationError(f"{field}.name", "is required")
    out: CanonicalItem = {
        "name": check_text(data["name"], f"{field}.name", NAME_MAX),
        "price": price_text(data.get("price"), f"{field}.price"),
    }
    for key in OPTIONAL_URLS:
        if data.get(key) is not None:
            out[key] = check_url(data[key], f"{field}.{key}")
    for key in OPTIONAL_TEXTS:
        if data.get(key) is not None:
            out[key] = check_host_id(data[key], f"{field}.{key}")
    quantity = data.get("quantity")
    if quantity is not None:
        if (
            isinstance(quantity, bool)
            or not isinstance(quantity, int)
            or not 1 <= quantity <= QUANTITY_MAX
        ):
            raise ValidationError(
                f"{field}.quantity",
                f"must be a whole number ≥ 1 and ≤ {QUANTITY_MAX}, got {quoted(quantity)}",
            )
        out["quantity"] = str(quantity)
    tags = data.get("tags") or {}
    if not isinstance(tags, Mapping):
        raise ValidationError(f"{field}.tags", "must be a mapping of tag name to value")
    checked_tags: dict[str, str] = {}
    for name, value in tags.items():
        check_text(name, f"{field}.tags", 90)
        checked_tags[name] = _tag_text(value, f"{field}.tags[{quoted(name)}]")
    if checked_tags:
        out["tags"] = checked_tags
    return out


def canonical_items(items: object, field: str = "items") -> list[CanonicalItem]:
    """Check a list of products; the error names the first bad one (``items[2].price``)."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise ValidationError(field, f"must be a list of Item, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        key = _memo_key(item)
        checked = _CHECKED.get(key) if key is not None else None
        if checked is None:
            checked = canonical_item(item, f"{field}[{i}]")
            if key is not None:
                if len(_CHECKED) >= MEMO_SIZE:
                    _CHECKED.clear()
                _CHECKED[key] = checked
        out.append(checked)
    return out


MEMO_SIZE = 10_000
_CHECKED: dict[tuple[Any, ...], CanonicalItem] = {}
"""Checked products by what was passed in. A shop's cart hooks pass the same catalogue items
again and again; checking each once keeps capture cheap. Results are never mutated."""


def _memo_key(item: object) -> tuple[Any, ...] | None:
    """A key that tells apart every input whose checked form differs, or None (not memoized).

    Values carry their type (``1`` vs ``True`` vs ``1.0``), and Decimals and floats their
    text, since ``Decimal("23.5") == Decimal("23.50")`` and ``0.0 == -0.0`` yet each pair is
    sent differently.
    """
    if type(item) is not Item or not isinstance(item.tags, dict):
        return None
    try:
        key = (
            item.name,
            _exact(item.price),
            item.url,
            item.imageurl,
            item.brand,
            _exact(item.quantity),
            item.sku,
            tuple((name, _exact(value)) for name, value in item.tags.items()),
        )
        hash(key)
    except TypeError:  # an unhashable value: checked, just not memoized
        return None
    return key


def _exact(value: object) -> tuple[type, object]:
    return (type(value), repr(value) if isinstance(value, Decimal | float) else value)


def serialize_items(items: Sequence[CanonicalItem], names: ItemsSettings) -> list[dict[str, str]]:
    """Map canonical products to the API's field names, in the seed's order, values as text."""
    out = []
    for item in items:
        row: dict[str, str] = {}
        for key in ("name", "price", "url", "imageurl", "brand", "quantity", "sku"):
            if key in item:
                row[getattr(names, key)] = item[key]
        for tag, value in item.get("tags", {}).items():
            row[f"{names.tag_prefix}{tag}"] = value
        out.append(row)
    return out


def items_param(items: Sequence[CanonicalItem], names: ItemsSettings) -> dict[str, Any]:
    """The ``items`` param value before encoding: ``{"array": [...]}``."""
    return {"array": serialize_items(items, names)}


def items_total(items: Sequence[CanonicalItem]) -> str:
    """Sum of price × quantity (quantity 1 when absent), as text."""
    total = sum(
        (Decimal(item["price"]) * int(item.get("quantity", "1")) for item in items), Decimal(0)
    )
    return format(total, "f")


def item_rows(value: Any) -> list[dict[str, Any]] | None:
    """The products in an ``items`` param as sent: a v1 JSON string or a v2 object, holding
    ``{"array": [...]}`` or a bare list; None when the value is not such a list of objects.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict) and isinstance(value.get("array"), list):
        value = value["array"]
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return value
    return None

"""One past order, checked: what ``tracker.backfill_orders`` accepts and how it says what is
wrong.

An order is a mapping or an object with ``order_id``, ``email``, ``items`` (a list of
:class:`~shop_events.payload.items.Item` or mappings), ``created`` (an aware datetime) and,
optionally, ``total`` (default: the sum of the items), ``currency`` and ``status`` (default
``INITIALIZED``, as :meth:`order_placed`'s). The checks are live capture's own; a refused order
is named by its place among the orders given and by its id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..capture.base import check_currency
from ..capture.orders import check_status
from ..errors import ValidationError
from ..payload.items import CanonicalItem, canonical_items, items_total, price_text
from ..payload.validation import check_email, check_host_id, quoted

DEFAULT_STATUS = "INITIALIZED"
FIELDS = ("order_id", "email", "items", "total", "currency", "status", "created")
REQUIRED = frozenset({"order_id", "email", "items", "created"})
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class PastOrder:
    """A past order as the backfill sends it: every value checked, ``created`` in UTC."""

    order_id: str
    email: str
    items: list[CanonicalItem]
    total: str
    currency: str | None
    status: str
    created: datetime


@dataclasses.dataclass(frozen=True)
class UnreadableOrder:
    """An order of the shop that could not even be read (a mapping's getter raised)."""

    order_id: str | None
    error: ValidationError


@dataclasses.dataclass(frozen=True)
class SkippedOrder:
    """An order left out, and why: ``error.field`` names its place and the field
    (``orders[12].email``), ``error.rule`` the rule and the order's id."""

    index: int
    """Its place among the orders given to the run, from 0."""
    order_id: str | None
    error: ValidationError


def check_order(value: object, now: datetime) -> PastOrder:
    """``value`` as a :class:`PastOrder`, or :class:`ValidationError` naming the field."""
    read = _reader(value)
    order_id = check_host_id(read("order_id"), "order_id")
    email = check_email(read("email"))
    items = canonical_items(read("items"))
    total = read("total", None)
    amount = price_text(total, "total") if total is not None else items_total(items)
    currency = check_currency(read("currency", None))
    status = read("status", None)
    created = check_created(read("created"), now)
    return PastOrder(
        order_id=order_id,
        email=email,
        items=items,
        total=amount,
        currency=currency,
        status=check_status(status) if status is not None else DEFAULT_STATUS,
        created=created,
    )


def check_created(value: object, now: datetime) -> datetime:
    """When the order was placed: an aware datetime, not after ``now``; returned in UTC."""
    if not isinstance(value, datetime):
        raise ValidationError(
            "created", f"must be a datetime (when the order was placed), got {quoted(value)}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            "created",
            f"must be timezone-aware, got the naive {value.isoformat()} (its zone is unknown: "
            "pass it with tzinfo, e.g. .replace(tzinfo=UTC) for a UTC time)",
        )
    if value > now:
        raise ValidationError(
            "created", f"is in the future ({value.isoformat()}); a past order was placed already"
        )
    return value.astimezone(UTC)


def skipped(index: int, value: object, error: ValidationError) -> SkippedOrder:
    """The order at ``index`` refused for ``error``: its field prefixed with its place, its id
    (as far as it can be read) added to the rule."""
    order_id = order_id_of(value)
    place = f"orders[{index}]"
    field = place if error.field == "order" else f"{place}.{error.field}"
    about = f" (order {quoted(order_id)})" if order_id is not None else ""
    return SkippedOrder(index, order_id, ValidationError(field, f"{error.rule}{about}"))


def order_id_of(value: object) -> str | None:
    """The order's id as text when it has a usable one, else None (for messages and the
    checkpoint)."""
    if isinstance(value, UnreadableOrder):
        return value.order_id
    try:
        found = _reader(value)("order_id", None)
        return None if found is None else check_host_id(found, "order_id")
    except ValidationError:
        return None


def _reader(value: object) -> Any:
    """A function reading one field of the order, from a mapping's keys or an object's
    attributes; a required field that is missing is a :class:`ValidationError`."""
    if value is None or isinstance(value, str | bytes | int | float | list):
        raise ValidationError(
            "order",
            "must be a mapping or an object with order_id, email, items and created, got "
            f"{type(value).__name__}",
        )

    def read(name: str, default: object = _MISSING) -> Any:
        if isinstance(value, Mapping):
            found = value.get(name, _MISSING)
        else:
            found = getattr(value, name, _MISSING)
        if found is _MISSING:
            if default is _MISSING:
                raise ValidationError(name, "is required")
            return default
        return found

    return read

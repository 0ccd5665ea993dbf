"""How the shop's own models read as carts, orders and customers: the mappings and their checks.

A shop declares in a few lines how to read a cart, an order and a customer from its models;
:class:`~.listeners.CaptureModels` then listens to SQLAlchemy's ORM events and calls the tracker
itself::

    from shop_events import CartMapping, CustomerMapping, Item, OrderMapping, Tracker
    from shop_events.integrations.models import CaptureModels

    def item(line: CartLine | OrderLine) -> Item:
        return Item(name=line.product.name, price=line.product.price, quantity=line.quantity,
                    url=f"https://shop/p/{line.product.id}")

    CaptureModels(
        tracker,
        cart=CartMapping(Cart, item=item, email="user.email",
                         restore_url=lambda cart: f"https://shop/cart/{cart.id}"),
        order=OrderMapping(Order, item=item, email="user.email", total="total",
                           currency=lambda order: "EUR", cart_id="cart_id", status="status"),
        customer=CustomerMapping(User, first_name="name", upsert_contact=True),
    )

A getter is either an attribute name (dotted names follow relationships: ``"user.email"``) or
a function of the model instance. The checks here run when the capture is built, so a mapping
that does not fit its model fails at startup, naming the field.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, inspect
from sqlalchemy.orm import Mapper, RelationshipDirection, RelationshipProperty

from ...payload.items import Item

__all__ = [
    "CartMapping",
    "CustomerMapping",
    "Getter",
    "Item",
    "ItemGetter",
    "Key",
    "OrderMapping",
    "Parent",
    "getter_of",
    "mapper_of",
    "parent_of",
]

M = TypeVar("M")
Getter = str | Callable[[M], Any]
"""An attribute name (``"email"``, ``"user.email"``) or a function of the model instance."""
ItemGetter = Callable[[Any], Item | Mapping[str, Any]]
"""One line of a cart or an order → the product as the plugin sends it."""

# -- the shop's declarations -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CartMapping(Generic[M]):
    """How to read a cart from the shop's cart model.

    ``lines`` names the one-to-many relationship from the cart to its lines; ``item`` turns one
    line into an :class:`~.Item`. Changes to the lines or to the cart row send the
    whole cart at commit; a cart left with no lines is cleared.
    """

    model: type[M] = dataclasses.field(kw_only=False)
    item: ItemGetter
    lines: str = "lines"
    id: Getter[M] = "id"
    """The cart id the plugin knows the cart by (the restore link's id, say)."""
    email: Getter[M] | None = None
    visitor_id: Getter[M] | None = None
    currency: Getter[M] | None = None
    restore_url: Getter[M] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrderMapping(Generic[M]):
    """How to read an order from the shop's order model.

    The order is placed at the first commit where it has lines, provided the order or its lines
    were inserted in that transaction. ``total`` defaults to the sum of the items; ``cart_id``
    is the cart the order converts (the plugin's cart id); ``status`` lets later status changes
    raise ``order_status_changed``.
    """

    model: type[M] = dataclasses.field(kw_only=False)
    item: ItemGetter
    lines: str = "lines"
    id: Getter[M] = "id"
    email: Getter[M] = "email"
    total: Getter[M] | None = None
    currency: Getter[M] | None = None
    cart_id: Getter[M] | None = None
    status: Getter[M] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CustomerMapping(Generic[M]):
    """How to read a customer from the shop's user model.

    An inserted customer completes their registration; with ``upsert_contact`` it also creates
    the contact on the platform (``create_contact``) with the names, phone and ``fields``.
    """

    model: type[M] = dataclasses.field(kw_only=False)
    email: Getter[M] = "email"
    first_name: Getter[M] | None = None
    last_name: Getter[M] | None = None
    phone: Getter[M] | None = None
    fields: Callable[[M], Mapping[int | str, Any]] | None = None
    """Additional contact fields: field id → value."""
    upsert_contact: bool = False


# -- checked against the model ----------------------------------------------------------------

Key = tuple[Any, ...]
"""A cart's or an order's join columns (usually its primary key), or a customer's primary key."""


@dataclasses.dataclass(frozen=True)
class Parent:
    """A cart or order model with its lines: which columns join them."""

    mapper: Mapper[Any]
    lines: RelationshipProperty[Any]
    line_mapper: Mapper[Any]
    keys: tuple[str, ...]
    """Attribute keys, on the parent, of the columns its lines point at."""
    columns: tuple[ColumnElement[Any], ...]
    line_keys: tuple[str, ...]
    """Attribute keys, on a line, of its foreign key to the parent."""
    line_columns: tuple[ColumnElement[Any], ...]

    def where(self, key: Key) -> Any:
        """The conditions that select the parent row of ``key``."""
        return [column == value for column, value in zip(self.columns, key, strict=True)]


def parent_of(field: str, model: type[Any], lines: str) -> Parent:
    """The parent model with its ``lines``, checked: a one-to-many relationship by foreign key."""
    mapper = mapper_of(field, model)
    rel = mapper.relationships.get(lines)
    if rel is None:
        raise ValueError(f"{field}.lines: {model.__name__} has no relationship {lines!r}")
    if rel.direction is not RelationshipDirection.ONETOMANY or rel.secondary is not None:
        raise ValueError(
            f"{field}.lines: {model.__name__}.{lines} must be a one-to-many relationship "
            "whose lines hold a foreign key to the parent"
        )
    pairs = list(rel.local_remote_pairs or ())
    local = tuple(local for local, _ in pairs)
    remote = tuple(remote for _, remote in pairs)
    return Parent(
        mapper=mapper,
        lines=rel,
        line_mapper=rel.mapper,
        keys=tuple(mapper.get_property_by_column(c).key for c in local),
        columns=local,
        line_keys=tuple(rel.mapper.get_property_by_column(c).key for c in remote),
        line_columns=remote,
    )


def mapper_of(field: str, model: type[Any]) -> Mapper[Any]:
    """The model's mapper; ``field`` names the mapping when the model is not mapped."""
    try:
        mapper: Mapper[Any] = inspect(model)
    except Exception:
        raise ValueError(f"{field}.model: {model!r} is not a mapped SQLAlchemy class") from None
    return mapper


def getter_of(field: str, model: type[Any], value: Getter[Any] | None) -> Callable[[Any], Any]:
    """The getter as a function; an attribute name is checked against the model now."""
    if value is None:
        return lambda _: None
    if isinstance(value, str):
        if not hasattr(model, value.split(".", 1)[0]):
            raise ValueError(
                f"{field}: {value!r} is not an attribute of {model.__name__}; "
                f"for a fixed value pass lambda _: {value!r}"
            )
        return operator.attrgetter(value)
    if not callable(value):
        raise TypeError(f"{field}: must be an attribute name or a function, got {value!r}")
    return value

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

A getter is either an attribute name (dotted names follow relationships: ``"user.email"``;
``None`` on the way gives ``None``) or a function of the model instance. A shop whose lines are
not a relationship (a property running a query) passes ``lines`` as a function too, with the
``line_model`` whose rows are the lines::

    CartMapping(Cart, item=item, lines=lambda cart: cart.lines, line_model=CartLine,
                email=lambda cart: db.session.get(User, cart.user_id).email)

The checks here run when the capture is built, so a mapping that does not fit its model fails
at startup, naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, ForeignKeyConstraint, inspect
from sqlalchemy.orm import ColumnProperty, Mapper, RelationshipDirection, RelationshipProperty

from ...payload.items import Item

__all__ = [
    "CartMapping",
    "CustomerMapping",
    "Getter",
    "Item",
    "ItemGetter",
    "Key",
    "LinesGetter",
    "OrderMapping",
    "Parent",
    "getter_of",
    "mapper_of",
    "parent_of",
    "status_reader",
]

M = TypeVar("M")
Getter = str | Callable[[M], Any]
"""An attribute name (``"email"``, ``"user.email"``) or a function of the model instance."""
ItemGetter = Callable[[Any], Item | Mapping[str, Any]]
"""One line of a cart or an order → the product as the plugin sends it."""
LinesGetter = str | Callable[[M], Iterable[Any]]
"""The one-to-many relationship's name, or a function of the cart or order giving its lines."""
LineKey = str | tuple[str, ...]
"""The attribute (or attributes) of a line that hold its cart's or order's key."""

# -- the shop's declarations -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CartMapping(Generic[M]):
    """How to read a cart from the shop's cart model.

    ``lines`` names the one-to-many relationship from the cart to its lines, or is a function
    of the cart giving them, with ``line_model`` (and, when the line model declares no foreign
    key to the cart, ``line_key``: its attribute holding the cart's primary key); ``item`` turns
    one line into an :class:`~.Item`. Changes to the lines or to the cart row send the whole
    cart at commit; a cart left with no lines is cleared.
    """

    model: type[M] = dataclasses.field(kw_only=False)
    item: ItemGetter
    lines: LinesGetter[M] = "lines"
    line_model: type[Any] | None = None
    """The model of the lines, when ``lines`` is a function."""
    line_key: LineKey | None = None
    """A line's attribute holding its cart's key, when no foreign key says so."""
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
    were inserted in that transaction; an order that cannot be read completely then (its total
    not set yet: its getter raises, or a mapped ``total`` reads None) is kept and placed at a
    later commit that touches it. ``total`` defaults to the sum of the items; ``cart_id`` is
    the cart the order converts (the plugin's cart id); ``status`` lets later status changes
    raise ``order_status_changed``. ``lines``, ``line_model`` and ``line_key`` are as in
    :class:`CartMapping`.

    ``status`` reads the shop's status (a function may combine two columns, such as a payment
    status and a ``ship_status``); ``status_map`` turns the shop's values into the status names
    the plugin sends, e.g. ``{1: "NEW", 2: "PAID", 3: "DELIVERED", 4: "CANCELLED"}``. A value
    not in the map is sent as it is, an :class:`enum.Enum` member by its name.

    ``created`` reads when the order was placed. Live capture does not need it; the backfill of
    past orders (``flask shop-events backfill orders``) does: it is the order's date, and
    ``--since``/``--until`` select on it (in SQL when it names a column of the order's table).
    A naive time is taken as UTC, as SQLAlchemy's ``DateTime`` columns store it.
    """

    model: type[M] = dataclasses.field(kw_only=False)
    item: ItemGetter
    lines: LinesGetter[M] = "lines"
    line_model: type[Any] | None = None
    line_key: LineKey | None = None
    id: Getter[M] = "id"
    email: Getter[M] = "email"
    total: Getter[M] | None = None
    currency: Getter[M] | None = None
    cart_id: Getter[M] | None = None
    status: Getter[M] | None = None
    status_map: Mapping[Any, str] | None = None
    """The shop's status values (integers, enum members, its own words) → the status sent."""
    created: Getter[M] | None = None
    """When the order was placed (``"created_at"``): needed to backfill past orders."""


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
    """A cart or order model with its lines: which columns join them, and how to read them."""

    mapper: Mapper[Any]
    line_mapper: Mapper[Any]
    keys: tuple[str, ...]
    """Attribute keys, on the parent, of the columns its lines point at."""
    columns: tuple[ColumnElement[Any], ...]
    line_keys: tuple[str, ...]
    """Attribute keys, on a line, of its foreign key to the parent."""
    line_columns: tuple[ColumnElement[Any], ...]
    lines: RelationshipProperty[Any] | None
    """The relationship to the lines, or None when a function of the parent reads them."""
    read_lines: Callable[[Any], Iterable[Any]]

    def where(self, key: Key) -> Any:
        """The conditions that select the parent row of ``key``."""
        return [column == value for column, value in zip(self.columns, key, strict=True)]


def parent_of(
    field: str,
    model: type[Any],
    lines: LinesGetter[Any],
    line_model: type[Any] | None = None,
    line_key: LineKey | None = None,
) -> Parent:
    """The parent model with its ``lines``, checked: a one-to-many relationship by foreign key,
    or a function of the parent with the ``line_model`` whose changes touch the parent."""
    mapper = mapper_of(field, model)
    name = model.__name__
    if callable(lines):
        if line_model is None:
            raise ValueError(
                f"{field}.line_model: required when lines is a function: the model whose rows "
                f"are the {field}'s lines (its changes send the {field})"
            )
        line_mapper = mapper_of(f"{field}.line_model", line_model)
        local, remote = _line_link(field, mapper, line_mapper, line_key)
        return _parent(mapper, line_mapper, local, remote, None, lines)
    if not isinstance(lines, str):
        raise TypeError(
            f"{field}.lines: must be a relationship's name or a function of the {field}, "
            f"got {lines!r}"
        )
    rel = mapper.relationships.get(lines)
    if rel is None:
        if hasattr(model, lines):
            raise ValueError(
                f"{field}.lines: {name}.{lines} is not a relationship; pass a function of the "
                f"{field} and the model of its lines instead: lines=lambda {field}: "
                f"{field}.{lines}, line_model=<the line model>"
            )
        raise ValueError(
            f"{field}.lines: {name} has no relationship {lines!r}; name the one-to-many "
            f"relationship to the lines, or pass lines=<a function of the {field}> with "
            "line_model=<the line model>"
        )
    if rel.direction is not RelationshipDirection.ONETOMANY or rel.secondary is not None:
        raise ValueError(
            f"{field}.lines: {name}.{lines} must be a one-to-many relationship "
            "whose lines hold a foreign key to the parent"
        )
    if line_model is not None or line_key is not None:
        raise ValueError(
            f"{field}.line_model: only with lines given as a function ({name}.{lines} is a "
            "relationship: its lines and their key are known)"
        )
    pairs = list(rel.local_remote_pairs or ())
    local = tuple(local for local, _ in pairs)
    remote = tuple(remote for _, remote in pairs)
    return _parent(mapper, rel.mapper, local, remote, rel, operator.attrgetter(rel.key))


def _parent(
    mapper: Mapper[Any],
    line_mapper: Mapper[Any],
    local: tuple[ColumnElement[Any], ...],
    remote: tuple[ColumnElement[Any], ...],
    rel: RelationshipProperty[Any] | None,
    read_lines: Callable[[Any], Iterable[Any]],
) -> Parent:
    return Parent(
        mapper=mapper,
        line_mapper=line_mapper,
        keys=tuple(mapper.get_property_by_column(c).key for c in local),
        columns=local,
        line_keys=tuple(line_mapper.get_property_by_column(c).key for c in remote),
        line_columns=remote,
        lines=rel,
        read_lines=read_lines,
    )


def _line_link(
    field: str, mapper: Mapper[Any], line_mapper: Mapper[Any], line_key: LineKey | None
) -> tuple[tuple[ColumnElement[Any], ...], tuple[ColumnElement[Any], ...]]:
    """The parent's columns and the line's columns that point at them."""
    name, line_name = mapper.class_.__name__, line_mapper.class_.__name__
    parent_table = mapper.local_table
    links = [
        fk
        for fk in getattr(line_mapper.local_table, "foreign_key_constraints", ())
        if isinstance(fk, ForeignKeyConstraint) and fk.referred_table is parent_table
    ]
    if line_key is None:
        if len(links) != 1:
            found = "no foreign key" if not links else f"{len(links)} foreign keys"
            raise ValueError(
                f"{field}.line_key: {line_name} has {found} to {name}; name the line's "
                f"attribute that holds its {field}'s id, e.g. line_key='{field}_id'"
            )
        elements = list(links[0].elements)
        return (
            tuple(e.column for e in elements),
            tuple(e.parent for e in elements),
        )
    names = (line_key,) if isinstance(line_key, str) else tuple(line_key)
    remote: list[ColumnElement[Any]] = []
    for key in names:
        prop = line_mapper.attrs.get(key) if isinstance(key, str) else None
        if not isinstance(prop, ColumnProperty) or len(prop.columns) != 1:
            raise ValueError(f"{field}.line_key: {key!r} is not a column attribute of {line_name}")
        remote.append(prop.columns[0])
    for fk in links:
        by_line: dict[Any, ColumnElement[Any]] = {e.parent: e.column for e in fk.elements}
        if set(by_line) == set(remote):
            return tuple(by_line[c] for c in remote), tuple(remote)
    primary = tuple(mapper.primary_key)
    if len(primary) != len(remote):
        raise ValueError(
            f"{field}.line_key: {len(remote)} attribute(s) for the {len(primary)} columns "
            f"of {name}'s primary key"
        )
    return primary, tuple(remote)


def mapper_of(field: str, model: type[Any]) -> Mapper[Any]:
    """The model's mapper; ``field`` names the mapping when the model is not mapped."""
    try:
        mapper: Mapper[Any] = inspect(model)
    except Exception:
        raise ValueError(f"{field}.model: {model!r} is not a mapped SQLAlchemy class") from None
    return mapper


def getter_of(field: str, model: type[Any], value: Getter[Any] | None) -> Callable[[Any], Any]:
    """The getter as a function; an attribute name is checked against the model now.

    A dotted name follows attributes one by one and gives None where one on the way is None
    (a guest cart's ``"user.email"``).
    """
    if value is None:
        return lambda _: None
    if isinstance(value, str):
        names = value.split(".")
        if not hasattr(model, names[0]):
            raise ValueError(_not_an_attribute(field, model, value))
        if len(names) == 1:
            return operator.attrgetter(value)
        return functools.partial(_follow, tuple(names))
    if not callable(value):
        raise TypeError(f"{field}: must be an attribute name or a function, got {value!r}")
    return value


def _follow(names: tuple[str, ...], row: Any) -> Any:
    found = row
    for name in names:
        if found is None:
            return None
        found = getattr(found, name)
    return found


def _not_an_attribute(field: str, model: type[Any], value: str) -> str:
    row, _, name = field.partition(".")
    function = f"{name}=lambda {row}: <the {name} of this {row}>"
    if "." in value:
        first = value.split(".", 1)[0]
        return (
            f"{field}: {model.__name__} has no attribute {first!r} (the start of {value!r}); "
            f"without that relationship read the value with a function of the {row}: "
            f"{function}"
        )
    message = (
        f"{field}: {value!r} is not an attribute of {model.__name__}; pass a function of the "
        f"{row} ({function})"
    )
    if value.isidentifier() and value.islower():
        return message  # an attribute's name, not a value meant as it is
    return f"{message}, or for a fixed value {name}=lambda _: {value!r}"


def status_reader(
    field: str, model: type[Any], status: Getter[Any] | None, status_map: Mapping[Any, str] | None
) -> Callable[[Any], str | None]:
    """The order's status as the plugin sends it: read by ``status``, then turned into a status
    name by ``status_map`` (a value not in it as it is, an enum member by its name)."""
    if status_map is not None:
        if status is None:
            raise ValueError(
                f"{field}.status_map: needs status= (the attribute or function that reads the "
                "shop's status)"
            )
        if not isinstance(status_map, Mapping):
            raise TypeError(f"{field}.status_map: must be a mapping, got {status_map!r}")
        for key, name in status_map.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(
                    f"{field}.status_map[{key!r}]: must be a status name (text), got {name!r}"
                )
    read = getter_of(f"{field}.status", model, status)
    names = dict(status_map or {})

    def status_of(row: Any) -> str | None:
        return status_text(read(row), names)

    return status_of


def status_text(value: Any, status_map: Mapping[Any, str]) -> str | None:
    """One status value of the shop as a status name (see :func:`status_reader`)."""
    if value is None:
        return None
    if status_map:
        candidates = [value]
        if isinstance(value, enum.Enum):
            candidates += [value.value, value.name]
        for candidate in candidates:
            try:
                found = status_map.get(candidate)
            except TypeError:  # an unhashable value: not in the map
                found = None
            if found is not None:
                return found
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)

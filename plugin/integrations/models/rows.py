"""Reading the shop's rows: the role of each mapped model, the keys of its rows and the loader
that reads a cart or an order again at commit.

Also :func:`same_database`, which tells whether the shop's engine reaches the plugin's database
(then the captures are written inside the shop's transaction).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, bindparam, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    RelationshipDirection,
    RelationshipProperty,
    Session,
    joinedload,
)
from sqlalchemy.orm.interfaces import LoaderOption

from .mappings import Getter, Key, Parent

__all__ = ["same_database"]

# -- what the listeners know about a mapping ---------------------------------------------------


class _Role(enum.Enum):
    CART = "cart"
    CART_LINE = "cart line"
    ORDER = "order"
    ORDER_LINE = "order line"
    CUSTOMER = "customer"


def _key(state: InstanceState[Any], keys: Sequence[str]) -> tuple[Key | None, Key | None]:
    """The key's current and previous values from the instance, without loading anything."""
    now: list[Any] = []
    before: list[Any] = []
    moved = False
    for attr in keys:
        history = state.attrs[attr].history
        current = history.added or history.unchanged
        if not current:
            return None, None
        now.append(current[0])
        if history.deleted and history.deleted[0] is not None:
            before.append(history.deleted[0])
            moved = True
        else:
            before.append(current[0])
    key = tuple(now)
    return (None if None in key else key), (tuple(before) if moved else None)


def _primary_key(state: InstanceState[Any]) -> Key | None:
    values = tuple(state.mapper.primary_key_from_instance(state.obj()))
    return None if None in values else values


def _label(key: Key) -> str:
    return str(key[0] if len(key) == 1 else key)


def _encode(key: Key) -> str:
    """A row's key as text for the kept captures table."""
    plain = [v if v is None or isinstance(v, int | float | str) else str(v) for v in key]
    return json.dumps(plain, separators=(",", ":"))


# -- reading a cart or an order at commit ------------------------------------------------------


class _Loader:
    """Reads a cart or an order as it is in the database now (after the last flush), in one
    statement built once per mapping.

    Lines added by their foreign key, or removed by a bulk delete, are not in a collection
    loaded earlier, and another request may have changed the cart since the shop read it: the
    row and its lines are read again. What the getters are likely to read comes in the same
    statement: the relationships a dotted getter follows (``"user.email"``) and each line's
    many-to-one references (``line.product``), which would otherwise be read one query per line.
    Lines read by a function of the row are read by it, at commit.
    """

    def __init__(
        self, model: type[Any], parent: Parent, getters: Iterable[Getter[Any] | None]
    ) -> None:
        self.mapper = parent.mapper
        self._names = tuple(f"shop_events_key_{n}" for n in range(len(parent.columns)))
        where = [c == bindparam(n) for c, n in zip(parent.columns, self._names, strict=True)]
        options = _followed(parent.mapper, getters)
        if parent.lines is not None:
            lines = joinedload(parent.lines.class_attribute)
            references = [
                joinedload(rel.class_attribute) for rel in _references(parent.line_mapper, parent)
            ]
            options.append(lines.options(*references) if references else lines)
        self._query: Select[Any] = (
            select(model).where(*where).options(*options).execution_options(populate_existing=True)
        )

    def __call__(self, session: Session, key: Key) -> Any:
        """The row of ``key`` with its lines, or None when it no longer exists."""
        found = session.execute(
            self._query,
            dict(zip(self._names, key, strict=True)),
            bind_arguments={"mapper": self.mapper},
        )
        return found.unique().scalars().first()


def _followed(mapper: Mapper[Any], getters: Iterable[Getter[Any] | None]) -> list[LoaderOption]:
    """Joined loads of the relationships the dotted getters follow (``user`` of ``user.email``)."""
    paths: dict[tuple[str, ...], LoaderOption] = {}
    for getter in getters:
        if not isinstance(getter, str) or "." not in getter:
            continue
        at, option = mapper, None
        path: tuple[str, ...] = ()
        for name in getter.split(".")[:-1]:
            rel = at.relationships.get(name)
            if rel is None or rel.uselist or rel.secondary is not None:
                break
            path = (*path, name)
            option = (
                joinedload(rel.class_attribute)
                if option is None
                else option.joinedload(rel.class_attribute)
            )
            paths[path] = option
            at = rel.mapper
    # only the longest paths: each carries the joins before it
    return [o for p, o in paths.items() if not any(q[: len(p)] == p and q != p for q in paths)]


def _references(line_mapper: Mapper[Any], parent: Parent) -> list[RelationshipProperty[Any]]:
    """A line's many-to-one references loaded lazily by default (its product), not its parent."""
    return [
        rel
        for rel in line_mapper.relationships
        if rel.direction is RelationshipDirection.MANYTOONE
        and rel.secondary is None
        and rel.lazy == "select"
        and not rel.mapper.common_parent(parent.mapper)
    ]


def _keys_in(
    parameters: Any, keys: Sequence[str], columns: Sequence[ColumnElement[Any]]
) -> list[Key]:
    """Foreign keys in the parameters of a bulk insert (by attribute key or column name)."""
    rows = parameters if isinstance(parameters, list | tuple) else [parameters or {}]
    found: list[Key] = []
    for row in rows:
        values = tuple(
            row.get(attr, row.get(column.key)) for attr, column in zip(keys, columns, strict=True)
        )
        if None not in values:
            found.append(values)
    return found


def same_database(a: Engine, b: Engine) -> bool:
    """Whether two engines reach the same database (an in-memory SQLite is its engine's own)."""
    if a is b:
        return True
    url_a, url_b = make_url(str(a.url)), make_url(str(b.url))
    if url_a.get_backend_name() != url_b.get_backend_name():
        return False
    if url_a.get_backend_name() == "sqlite":
        files = [u.database for u in (url_a, url_b)]
        if any(f in (None, "", ":memory:") for f in files):
            return False
        return os.path.realpath(str(files[0])) == os.path.realpath(str(files[1]))
    return (url_a.host, url_a.port, url_a.database, url_a.query.get("host")) == (
        url_b.host,
        url_b.port,
        url_b.database,
        url_b.query.get("host"),
    )

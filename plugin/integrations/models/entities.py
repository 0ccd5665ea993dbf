"""Entities made from the rows of a plain select of their columns, for the capture's read.

Loading entities through the ORM costs, per execution, far more than the statement: the ORM
sets up its compile state, a loading context and a row processor per entity, and runs each row
through them. The capture's read runs in the shop's commit, so for the models most shops have,
entities are made here from a select of their columns instead, with the end state the ORM's
``populate_existing`` load gives:

- a row already in the session gets its columns as the database has them (set only where one
  differs or has expired), and the relationships the read does not set are unloaded, to be read
  again when next used, as the ORM does;
- a row not in the session is made as the ORM makes it: a new instance without ``__init__``,
  its columns set, added to the session's identity map as persistent and clean.

Only where that is the whole of what the ORM would do: a model that is not part of an
inheritance hierarchy, whose attributes are plain columns of its table (no deferred column, no
column expression, no composite) and whose relationships load lazily; and a session without
listeners that would see the difference (``load`` or ``refresh`` on the models, a
``reconstructor``, ``loaded_as_persistent``, a ``do_orm_execute`` that could change what is
read, such as a soft-delete criteria). Anything else is read by the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import ColumnProperty, Mapper, Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.sql.schema import Column

_LAZY = frozenset({"select", "raise", "raise_on_sql", "noload", "dynamic", "write_only"})
"""Relationship loading the ORM does not do when it loads the row itself."""

_MISSING = object()


class Refused(Exception):
    """A row these entities cannot be made from as the ORM would make them: read by the ORM."""


def plain(mapper: Mapper[Any]) -> bool:
    """Whether the ORM's load of ``mapper``'s rows is only what :class:`Columns` does."""
    if (
        mapper.inherits is not None
        or list(mapper.self_and_descendants) != [mapper]
        or mapper.polymorphic_on is not None
        or mapper.always_refresh
        or mapper.composites
        or type(mapper.class_manager) is not ClassManager
    ):
        return False
    for prop in mapper.column_attrs:
        if (
            prop.deferred
            or len(prop.columns) != 1
            or not isinstance(prop.columns[0], Column)
            or prop.columns[0].table is not mapper.local_table
        ):
            return False
    return all(rel.lazy in _LAZY for rel in mapper.relationships)


class Columns:
    """Where one entity's columns are in a row, and how its instance is made or refreshed."""

    def __init__(self, mapper: Mapper[Any], offset: int, kept: Collection[str] = ()) -> None:
        self.mapper = mapper
        self.manager = mapper.class_manager
        self.props: tuple[ColumnProperty[Any], ...] = tuple(mapper.column_attrs)
        self.count = len(self.props)
        self.columns = tuple((prop.key, offset + n) for n, prop in enumerate(self.props))
        at = {prop.key: offset + n for n, prop in enumerate(self.props)}
        self.primary_key = tuple(
            at[mapper.get_property_by_column(column).key] for column in mapper.primary_key
        )
        # the relationships the reader sets from the same rows are replaced, not unloaded: the
        # rows they hold stay the same objects, refreshed in place
        self.relationships = tuple(rel.key for rel in mapper.relationships if rel.key not in kept)

    def watched(self) -> bool:
        """Whether a listener of the model would see a load or refresh."""
        dispatch = self.manager.dispatch
        return bool(dispatch.load) or bool(dispatch.refresh)

    def entity(self, session: Session, row: Sequence[Any], made: dict[Any, Any]) -> Any:
        """The instance of this entity in ``row``, or None (an outer join found none)."""
        identity = tuple([row[at] for at in self.primary_key])
        if None in identity:
            if all(value is None for value in identity):
                return None
            raise Refused(f"{self.mapper.class_.__name__}: a primary key partly NULL")
        key = (self.mapper.class_, identity, None)
        found = made.get(key)
        if found is not None:
            return found
        instance = session.identity_map.get(key)
        if instance is None:
            instance = self._new(session, key, row)
        else:
            self._refresh(instance, row)
        made[key] = instance
        return instance

    def _new(self, session: Session, key: Any, row: Sequence[Any]) -> Any:
        # as the ORM's loading makes a row it has not seen: no __init__, no attribute events
        instance = self.manager.new_instance()
        state = instance_state(instance)
        values = state.dict
        for name, at in self.columns:
            values[name] = row[at]
        state.key = key
        state.identity_token = None
        state.session_id = session.hash_key
        session.identity_map.add(state)
        return instance

    def _refresh(self, instance: Any, row: Sequence[Any]) -> None:
        # as the ORM's populate_existing: every column as the row has it, every relationship
        # the reader does not set unloaded (read again by its lazy loader when next used)
        state = instance_state(instance)
        if state.modified:
            raise Refused(f"{self.mapper.class_.__name__}: changed after the flush")
        values = state.dict
        if not self._same(values, row):
            for name, at in self.columns:
                set_committed_value(instance, name, row[at])
        for name in self.relationships:
            state._reset(values, name)

    def _same(self, values: dict[str, Any], row: Sequence[Any]) -> bool:
        try:
            return all(_identical(values.get(name, _MISSING), row[at]) for name, at in self.columns)
        except Exception:  # a value whose comparison fails: read again
            return False


def _identical(held: Any, read: Any) -> bool:
    """Whether the value the session holds is the one the row has, as the getters would see it:
    equal values of another type or form (``Decimal("4.5")`` set by the shop, ``4.50`` in a
    ``Numeric(10, 2)`` column; the same instant in another time zone) are not."""
    if held is read:
        return True
    if type(held) is not type(read):
        return False
    if isinstance(held, Decimal | float):
        return repr(held) == repr(read)
    if isinstance(held, datetime | time):
        return bool(held == read) and held.utcoffset() == read.utcoffset()
    return bool(held == read)


class Plan:
    """The entities of a row of a plain select, in order; see the module's docstring.

    ``kept`` are, per entity, the relationships the reader sets itself from the rows. The first
    ``once`` entities are the same in every row (the parent and the rows its getters follow):
    they are read from the first row.
    """

    def __init__(
        self,
        mappers: Sequence[Mapper[Any]],
        kept: Sequence[Collection[str]],
        own: Collection[Callable[..., Any]],
        once: int = 0,
    ) -> None:
        self.entities: list[Columns] = []
        offset = 0
        for mapper, keys in zip(mappers, kept, strict=True):
            columns = Columns(mapper, offset, keys)
            self.entities.append(columns)
            offset += columns.count
        self._own = own
        self._once = once

    def usable(self, session: Session) -> bool:
        """Whether this session reads these entities as the ORM would."""
        dispatch = session.dispatch
        if isinstance(session, ShardedSession) or dispatch.loaded_as_persistent:
            return False
        if any(listener not in self._own for listener in dispatch.do_orm_execute):
            return False
        return not any(columns.watched() for columns in self.entities)

    def rows(self, session: Session, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Each row's entities, made or refreshed in ``session``; raises :class:`Refused`."""
        made: dict[Any, Any] = {}
        if not rows:
            return []
        first = [columns.entity(session, rows[0], made) for columns in self.entities[: self._once]]
        each = self.entities[self._once :]
        return [first + [columns.entity(session, row, made) for columns in each] for row in rows]


__all__ = ["Columns", "Plan", "Refused", "plain"]

"""Reading a cart or an order with what its getters read, in one statement.

At commit a capture reads the cart (or order) as it is in the database now, after the last
flush: lines added by their foreign key, or removed by a bulk delete, are not in a collection
loaded earlier, and another request may have changed the cart since the shop read it. What the
getters are likely to read comes in the same statement: the rows a dotted getter follows
(``"user.email"``) and each line's many-to-one references (``line.product``), which would
otherwise be read one query per line. Lines read by a function of the row are read by it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import (
    Mapper,
    RelationshipDirection,
    RelationshipProperty,
    Session,
    aliased,
    joinedload,
)
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.interfaces import LoaderOption

from .entities import Plan, Refused, plain
from .mappings import Getter, Key, Parent

Path = tuple[RelationshipProperty[Any], ...]

_NOT_LOADABLE = ("dynamic", "write_only")
"""Collections that are queries, not loaded lists: their function reads them."""


class Loader:
    """Reads a cart or an order, with its lines and what its getters read, as the database
    has it now.

    It is one ``SELECT`` of plain entities, built once per mapping: one row per line, each
    with the parent, the rows its dotted getters follow, the line and the line's references,
    joined outer, every entity but the parent and the lines aliased. The relationships are
    then set from those rows as loaded (joined eager loading reads the same rows with more of
    the ORM's work per read, on the host's commit path). Rows already in the
    session are refreshed from them. Where every model is plain and the session allows it
    (:mod:`.entities`), the same statement selects their columns and the instances are made
    from its rows, without the ORM's loading; ``own`` are the plugin's own ``do_orm_execute``
    listeners, which change no read.
    """

    def __init__(
        self,
        model: type[Any],
        parent: Parent,
        getters: Iterable[Getter[Any] | None],
        own: Collection[Callable[..., Any]] = (),
    ) -> None:
        self.mapper = parent.mapper
        self._names = tuple(f"shop_events_key_{n}" for n in range(len(parent.columns)))
        entities: list[Any] = [model]
        mappers: list[Mapper[Any]] = [parent.mapper]
        joins: list[Any] = []
        links: dict[tuple[int, str], int] = {}

        def join(owner: int, rel: RelationshipProperty[Any]) -> int:
            found = links.get((owner, rel.key))
            if found is not None:
                return found
            target = aliased(rel.mapper)
            attribute = getattr(entities[owner], rel.key)
            entities.append(target)
            mappers.append(rel.mapper)
            joins.append(attribute.of_type(target))
            links[(owner, rel.key)] = len(entities) - 1
            return len(entities) - 1

        for path in followed(parent.mapper, getters):
            at = 0
            for rel in path:
                at = join(at, rel)
        self._parent_links = tuple((o, k, t) for (o, k), t in links.items())
        self._line_links: tuple[tuple[str, int], ...] = ()
        self._line = -1
        order: Sequence[Any] = ()
        self._lines = loaded_lines(parent)
        if self._lines is not None:
            entities.append(parent.line_mapper.class_)
            mappers.append(parent.line_mapper)
            joins.append(self._lines.class_attribute)
            self._line = len(entities) - 1
            self._line_links = tuple(
                (rel.key, join(self._line, rel)) for rel in references(parent.line_mapper, parent)
            )
            order = self._lines.order_by or ()
        where = [c == bindparam(n) for c, n in zip(parent.columns, self._names, strict=True)]

        def read(*selected: Any) -> Select[Any]:
            query: Select[Any] = select(*selected).where(*where)
            for onto in joins:
                query = query.outerjoin(onto)
            return query.order_by(*order)

        self._query = read(*entities).execution_options(populate_existing=True)
        self._plain: tuple[Plan, Select[Any]] | None = None
        if all(plain(mapper) for mapper in mappers):
            kept: list[set[str]] = [set() for _ in mappers]
            for owner, name, _ in self._parent_links:
                kept[owner].add(name)
            for name, _ in self._line_links:
                kept[self._line].add(name)
            if self._lines is not None:
                kept[0].add(self._lines.key)
            plan = Plan(mappers, kept, own, once=self._line if self._line >= 0 else 0)
            columns = read(
                *(
                    getattr(entity, prop.key)
                    for entity, of_entity in zip(entities, plan.entities, strict=True)
                    for prop in of_entity.props
                )
            )
            self._plain = (plan, columns)

    def __call__(self, session: Session, key: Key) -> Any:
        """The row of ``key`` with its lines, or None when it no longer exists."""
        params = dict(zip(self._names, key, strict=True))
        rows: Sequence[Sequence[Any]] | None = self._plain_rows(session, params)
        if rows is None:
            rows = session.execute(
                self._query, params, bind_arguments={"mapper": self.mapper}
            ).all()
        if not rows:
            return None
        first = rows[0]
        for owner, name, target in self._parent_links:
            if first[owner] is not None:
                set_committed_value(first[owner], name, first[target])
        if self._lines is not None:
            lines: list[Any] = []
            seen: set[int] = set()
            for row in rows:
                line = row[self._line]
                if line is None or id(line) in seen:
                    continue
                seen.add(id(line))
                for name, target in self._line_links:
                    set_committed_value(line, name, row[target])
                lines.append(line)
            set_committed_value(first[0], self._lines.key, lines)
        return first[0]

    def _plain_rows(self, session: Session, params: dict[str, Any]) -> list[list[Any]] | None:
        """The rows' entities made from a select of their columns (see ``entities``); None
        where the ORM must read them."""
        if self._plain is None or not self._plain[0].usable(session):
            return None
        plan, columns = self._plain
        conn = session.connection(bind_arguments={"mapper": self.mapper})
        try:
            return plan.rows(session, conn.execute(columns, params).all())
        except Refused:
            return None


def load_options(
    parent: Parent,
    getters: Iterable[Getter[Any] | None],
    lines_loader: Callable[[Any], Any],
) -> list[LoaderOption]:
    """What a read of pages of carts or orders loads with them, rather than one query per row
    or line: the relationships the dotted getters follow (joined), and the lines (by
    ``lines_loader``) with their many-to-one references. Lines read by a function of the row
    are read by it."""
    options: list[LoaderOption] = []
    for path in followed(parent.mapper, getters):
        option = joinedload(path[0].class_attribute)
        for rel in path[1:]:
            option = option.joinedload(rel.class_attribute)
        options.append(option)
    loaded = loaded_lines(parent)
    if loaded is not None:
        lines = lines_loader(loaded.class_attribute)
        refs = [lines_loader(rel.class_attribute) for rel in references(parent.line_mapper, parent)]
        options.append(lines.options(*refs) if refs else lines)
    return options


def loaded_lines(parent: Parent) -> RelationshipProperty[Any] | None:
    """The relationship a read loads the lines by; None when a function of the row reads them
    (given as a function, or a collection that is a query)."""
    lines = parent.lines
    return None if lines is None or lines.lazy in _NOT_LOADABLE else lines


def followed(mapper: Mapper[Any], getters: Iterable[Getter[Any] | None]) -> list[Path]:
    """The relationships each dotted getter follows to one row (``user`` of ``user.email``);
    only the longest paths, each carrying the ones before it."""
    paths: list[Path] = []
    for getter in getters:
        if not isinstance(getter, str) or "." not in getter:
            continue
        at: Mapper[Any] = mapper
        path: Path = ()
        for name in getter.split(".")[:-1]:
            rel = at.relationships.get(name)
            if rel is None or rel.uselist or rel.secondary is not None:
                break
            path = (*path, rel)
            at = rel.mapper
        if path:
            paths.append(path)
    return [p for p in dict.fromkeys(paths) if not any(q[: len(p)] == p and q != p for q in paths)]


def references(line_mapper: Mapper[Any], parent: Parent) -> list[RelationshipProperty[Any]]:
    """A line's many-to-one references loaded lazily by default (its product), not its parent."""
    return [
        rel
        for rel in line_mapper.relationships
        if rel.direction is RelationshipDirection.MANYTOONE
        and rel.secondary is None
        and rel.lazy == "select"
        and not rel.mapper.common_parent(parent.mapper)
    ]


__all__ = ["Loader", "followed", "load_options", "loaded_lines", "references"]

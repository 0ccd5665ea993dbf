"""Statements each engine writes its own way, written through one helper for every engine.

PostgreSQL and SQLite share ``INSERT … ON CONFLICT`` and ``UPDATE … RETURNING``. MySQL has
neither: it has ``ON DUPLICATE KEY UPDATE``, whose assignments (like an ``UPDATE``'s) run left to
right, each seeing the values set before it; and no ``RETURNING`` (MariaDB's is for ``INSERT``
and ``DELETE`` only). Storage modules write these statements through the helpers here
(:func:`upsert`, :func:`upsert_where`, :func:`insert_new`, :func:`update_returning`,
:func:`delete_some`, :func:`locked_batch`), and ask :func:`is_mysql` where they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ClauseElement,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy import update as update_statement
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import visitors

MYSQL = frozenset({"mysql", "mariadb"})
"""The dialect names of MySQL and MariaDB (``mariadb+pymysql://`` names the second)."""

Assignments = Mapping[str, Any] | Sequence[tuple[str, Any]]
"""``SET`` assignments: column name to value (an SQL expression or a plain value)."""
Update = Assignments | Callable[[Any], Assignments] | None
"""What :func:`upsert` sets on an existing row: assignments, or a function of the proposed
row's columns returning them (``lambda new: {"items": new["items"]}``), or None for nothing."""
_DUPLICATE_KEY = frozenset({1062, 1586})
"""MySQL's error numbers for a duplicate key (``ER_DUP_ENTRY``, ``…_WITH_KEY_NAME``)."""
_INSERT_CHUNK = 50
"""Rows per multi-row ``INSERT`` on MySQL: one statement is all or nothing, and far below the
server's packet limit even for events of 20 kB."""


def is_mysql(conn: Connection | Engine) -> bool:
    """Whether ``conn`` talks to MySQL or MariaDB (the dialects ``mysql`` and ``mariadb``)."""
    return conn.dialect.name in MYSQL


def locked_batch(query: Select[Any]) -> CTE:
    """The rows of ``query`` locked for this transaction, skipping rows others hold (a CTE).

    Joined into an ``UPDATE … FROM``, the batch is computed once: PostgreSQL may re-run a
    ``LIMIT`` subquery inside ``WHERE id IN (…)`` and so claim more rows than the limit.
    SQLite ignores the lock clause; its write lock serialises the whole statement instead.
    """
    return query.with_for_update(skip_locked=True).cte("batch")


def _insert(dialect: str, table: Table) -> sqlite.Insert:
    # PostgreSQL's and SQLite's ``Insert`` share the ``on_conflict_*`` and ``excluded`` API used
    # here; the type names one of them for the type checker
    if dialect == "postgresql":
        return cast(sqlite.Insert, postgresql.insert(table))
    return sqlite.insert(table)


def _pairs(assignments: Assignments) -> list[tuple[str, Any]]:
    return list(assignments.items()) if isinstance(assignments, Mapping) else list(assignments)


def _check_order(table: Table, pairs: Sequence[tuple[str, Any]]) -> None:
    """Refuse assignments that MySQL would evaluate with a value set earlier in the statement:
    a column must be assigned after every assignment that reads it."""
    assigned: set[str] = set()
    for name, value in pairs:
        if isinstance(value, ClauseElement):
            read = {
                element.name
                for element in visitors.iterate(value)
                if isinstance(element, Column) and element.table is table
            }
            early = sorted(read & assigned)
            if early:
                raise ValueError(
                    f"{table.name}.{name}: reads {', '.join(early)}, assigned before it; MySQL"
                    " would read the new value: assign it first"
                )
        assigned.add(name)


def _is_duplicate(error: IntegrityError) -> bool:
    args: tuple[Any, ...] = getattr(error.orig, "args", ())
    return bool(args) and args[0] in _DUPLICATE_KEY


def _try_insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> bool:
    """One multi-row ``INSERT`` on MySQL; False (and nothing inserted) on a duplicate key. MySQL
    undoes only the failed statement: the transaction goes on."""
    try:
        conn.execute(insert(table).values([dict(row) for row in rows]))
    except IntegrityError as error:
        if _is_duplicate(error):
            return False
        raise
    return True


def _insert_or_lock(conn: Connection, table: Table, values: Mapping[str, Any]) -> bool:
    """On MySQL, insert a row of a table without an auto-increment key, or lock the one with
    its key; whether it was inserted. Either way the row is locked until the transaction ends.

    Not a plain ``INSERT``: its duplicate-key error leaves a shared lock, and two writers that
    then both want the row's exclusive lock deadlock. An upsert locks exclusively at once; the
    assignment that changes nothing sets ``LAST_INSERT_ID`` to 1, which the answer carries only
    when the row was there (an insert into such a table reports 0).
    """
    first = next(iter(table.primary_key.columns))
    marked = func.IF(func.last_insert_id(1), first, first)
    stmt = mysql.insert(table).values(dict(values)).on_duplicate_key_update([(first.name, marked)])
    return conn.execute(stmt).lastrowid == 0


def upsert(
    conn: Connection | str,
    table: Table,
    values: Mapping[str, Any],
    *,
    update: Update = None,
    key: Sequence[Column[Any]] | None = None,
) -> Insert:
    """``INSERT`` of ``values``; where a row with the same ``key`` (default: the primary key)
    exists, ``SET update`` on it instead, or leave it as it is (``update=None``).

    On MySQL the assignments run in the order given, each seeing the values set before it: list
    a column after every assignment that reads it (a wrong order raises ``ValueError``).
    ``conn`` may be the dialect's name, for a statement built once and kept.
    """
    dialect = conn if isinstance(conn, str) else conn.dialect.name
    target = list(key) if key is not None else list(table.primary_key.columns)
    if dialect in MYSQL:
        upserting = mysql.insert(table).values(values)
        if update is None:
            return upserting.on_duplicate_key_update([(target[0].name, target[0])])
        pairs = _pairs(update(upserting.inserted) if callable(update) else update)
        _check_order(table, pairs)
        return upserting.on_duplicate_key_update(pairs)
    inserting = _insert(dialect, table).values(values)
    if update is None:
        return inserting.on_conflict_do_nothing(index_elements=target)
    pairs = _pairs(update(inserting.excluded) if callable(update) else update)
    return inserting.on_conflict_do_update(index_elements=target, set_=dict(pairs))


def upsert_where(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    update: Assignments,
    where: ColumnElement[bool],
) -> bool:
    """``INSERT`` of ``values``, or, where the row with the same primary key exists and ``where``
    holds on it, ``SET update``; whether a row was written. Two writers racing for one key are
    decided one after the other."""
    key = list(table.primary_key.columns)
    pairs = _pairs(update)
    if not is_mysql(conn):
        stmt = _insert(conn.dialect.name, table).values(values)
        stmt = stmt.on_conflict_do_update(index_elements=key, set_=dict(pairs), where=where)
        return conn.execute(stmt.returning(*key)).first() is not None
    _check_order(table, pairs)
    same = and_(*(column == values[column.name] for column in key))
    found = conn.execute(select(*key).where(same).with_for_update()).first()
    if found is None and _insert_or_lock(conn, table, values):
        return True
    written = conn.execute(update_statement(table).where(same, where).ordered_values(*pairs))
    return bool(written.rowcount == 1)


def insert_new(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: Column[Any]
) -> list[Mapping[str, Any]]:
    """``INSERT`` each of ``rows`` whose ``key`` is in neither the table nor an earlier row;
    the rows inserted. Two writers racing never both insert one key.

    On MySQL, a row of a table without an auto-increment key that was there already is locked
    until the transaction ends (see :func:`_insert_or_lock`): write it next, if need be.
    """
    first: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        first.setdefault(row[key.name], row)
    if not first:
        return []
    if not is_mysql(conn):
        stmt = _insert(conn.dialect.name, table).on_conflict_do_nothing(index_elements=[key])
        inserted = set(conn.execute(stmt.returning(key), list(first.values())).scalars())
        return [row for value, row in first.items() if value in inserted]
    if table.autoincrement_column is None:
        return [row for row in first.values() if _insert_or_lock(conn, table, row)]
    there = set(conn.execute(select(key).where(key.in_(list(first)))).scalars())
    fresh = [row for value, row in first.items() if value not in there]
    done: list[Mapping[str, Any]] = []
    for start in range(0, len(fresh), _INSERT_CHUNK):
        chunk = fresh[start : start + _INSERT_CHUNK]
        if _try_insert(conn, table, chunk):
            done += chunk
        else:  # another writer inserted one of them meanwhile: one by one
            done += [row for row in chunk if _try_insert(conn, table, [row])]
    return done


def update_returning(
    conn: Connection,
    table: Table,
    where: ColumnElement[bool],
    values: Assignments,
    returning: Sequence[ColumnElement[Any]],
    *,
    batch: Select[Any] | None = None,
) -> list[Row[Any]]:
    """``UPDATE`` the rows where ``where`` holds to ``values``; the ``returning`` columns of the
    rows updated (as they are after the update).

    With ``batch`` (a query of the primary key, ordered and limited) only its rows are updated,
    locked for this transaction and skipping rows others hold (see :func:`locked_batch`): two
    claimers never update the same row. On MySQL the rows are read with ``FOR UPDATE``, then
    updated by key: a locked row still matches ``where`` (MySQL refuses a subquery on the table
    being updated, as a condition over the row's neighbours is), and read back.
    """
    [key] = table.primary_key.columns
    pairs = _pairs(values)
    if not is_mysql(conn):
        stmt = update_statement(table)
        if batch is not None:
            locked = locked_batch(batch)
            stmt = stmt.where(key == locked.c[key.name])
        stmt = stmt.where(where).values(dict(pairs)).returning(*returning)
        return list(conn.execute(stmt).all())
    _check_order(table, pairs)
    query = batch if batch is not None else select(key).where(where)
    keys = list(conn.execute(query.with_for_update(skip_locked=batch is not None)).scalars())
    if not keys:
        return []
    conn.execute(update_statement(table).where(key.in_(keys)).ordered_values(*pairs))
    return list(conn.execute(select(*returning).where(key.in_(keys))).all())


def delete_some(conn: Connection, table: Table, where: ColumnElement[bool], limit: int) -> int:
    """``DELETE`` at most ``limit`` rows where ``where`` holds; how many."""
    key = list(table.primary_key.columns)
    batch = select(*key).where(where).limit(limit)
    if is_mysql(conn):
        # MySQL takes neither a LIMIT in an IN subquery nor the table being deleted from in a
        # subquery; a derived table is read whole first
        derived = batch.subquery("batch")
        batch = select(*derived.c)
    target = key[0] if len(key) == 1 else tuple_(*key)
    return int(conn.execute(delete(table).where(target.in_(batch))).rowcount)

"""The account's rate limit, shared by every process and host on one database.

One row per endpoint family holds ``next_at``: the first instant, on the database's clock,
that no sender has been handed yet. A sender reserves a run of consecutive send slots with
one statement (an upsert that moves ``next_at`` on and returns where its run starts; on MySQL,
which returns nothing from an upsert, the row is read ``FOR UPDATE`` and written in the same
transaction), so the runs of all senders never overlap and the family's requests stay spaced at
its rate whatever the number of processes. A sender that dies leaves its unused slots unused:
the limit can only be undershot, never crossed.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import Connection, Float, func, literal, select, update
from sqlalchemy.sql.elements import ColumnElement

from .engines import insert_new, is_mysql, upsert
from .tables import rate_schedule

HORIZON = 60.0
"""Seconds past the database's now that ``next_at`` may be: a value further away (a database
clock that stepped back) is read as this far, so no family stalls for longer."""


@dataclasses.dataclass(frozen=True)
class Reservation:
    """A run of slots: the first one's instant and the database's now, both in epoch seconds."""

    start: float
    now: float


def _now(conn: Connection) -> ColumnElement[float]:
    """The database's clock in seconds since the epoch, fixed for the whole statement."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", func.statement_timestamp()).cast(Float(precision=53))
    if is_mysql(conn):  # NOW(6) is the statement's start, to the microsecond
        return func.unix_timestamp(func.now(6))
    return (func.julianday("now") - 2440587.5) * 86400.0


def _greatest(conn: Connection, *values: ColumnElement[float]) -> ColumnElement[float]:
    if conn.dialect.name == "postgresql":
        return func.greatest(*values)
    return func.max(*values)  # SQLite's max() with several arguments is the scalar one


def _least(conn: Connection, *values: ColumnElement[float]) -> ColumnElement[float]:
    if conn.dialect.name == "postgresql":
        return func.least(*values)
    return func.min(*values)


def _move(conn: Connection, family: str, delay: float, span: float) -> Reservation:
    """Set ``next_at`` to ``max(next_at, now + delay) + span`` (bounded by :data:`HORIZON`)."""
    if is_mysql(conn):
        return _move_locked(conn, family, delay, span)
    now = _now(conn)
    earliest = now if not delay else now + literal(delay, Float(precision=53))
    column = rate_schedule.c.next_at
    start = _least(conn, _greatest(conn, column, earliest), now + HORIZON)
    stmt = upsert(
        conn,
        rate_schedule,
        {"family": family, "next_at": earliest + span},
        update={"next_at": start + span},
    )
    row = conn.execute(stmt.returning(column, now.label("now"))).one()
    return Reservation(start=row.next_at - span, now=row.now)


def _move_locked(conn: Connection, family: str, delay: float, span: float) -> Reservation:
    """:func:`_move` as a read ``FOR UPDATE`` and a write in this transaction: the row's lock
    orders the senders as the one upsert does elsewhere. A family's first row starts at 0, so
    its first run starts at the database's now."""
    key = rate_schedule.c.family == family
    locked = select(rate_schedule.c.next_at, _now(conn).label("now")).where(key).with_for_update()
    row = conn.execute(locked).first()
    if row is None:
        first = {"family": family, "next_at": 0.0}
        insert_new(conn, rate_schedule, [first], rate_schedule.c.family)
        row = conn.execute(locked).one()
    now = float(row.now)
    start = min(max(row.next_at, now + delay), now + HORIZON)
    conn.execute(update(rate_schedule).where(key).values(next_at=start + span))
    return Reservation(start=start, now=now)


def reserve(conn: Connection, family: str, span: float) -> Reservation:
    """Take the next ``span`` seconds of ``family``'s schedule for one sender; where they start
    (never before the database's now)."""
    return _move(conn, family, 0.0, span)


def hold(conn: Connection, family: str, seconds: float) -> None:
    """Hand out no slot of ``family`` for ``seconds`` from the database's now (a 429)."""
    _move(conn, family, seconds, 0.0)


def next_at(conn: Connection, family: str) -> float | None:
    """The family's first free instant (epoch seconds, database clock), if any was taken."""
    return conn.execute(
        rate_schedule.select()
        .with_only_columns(rate_schedule.c.next_at)
        .where(rate_schedule.c.family == family)
    ).scalar_one_or_none()

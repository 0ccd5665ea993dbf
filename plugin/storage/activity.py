"""The lifecycle the three activity tables share: carts, browses and registrations.

Each is ``active`` until it comes due, then ``abandoned`` (its event queued for that version),
``suppressed`` (nothing to send) or ``converted``; these statements are written once for the
three, chosen by :class:`~.enums.Subject`. What is a table's own lives in its module
(:mod:`.carts`, :mod:`.browses`, :mod:`.registrations`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Table,
    and_,
    func,
    literal_column,
    select,
    update,
)

from .engines import delete_some, update_returning
from .enums import FINISHED_STATES, FlowState, SkipReason, Subject
from .tables import ABANDONED, browses, carts, registrations

Row = Any
"""A row of one of the three tables (``state``, ``version``, ``last_activity_at`` …)."""

_TABLES: dict[Subject, tuple[Table, Column[str]]] = {
    Subject.CART: (carts, carts.c.cart_id),
    Subject.BROWSE: (browses, browses.c.browse_key),
    Subject.REGISTRATION: (registrations, registrations.c.email),
}
SUBJECTS = tuple(_TABLES)
"""The subjects that have an activity table."""


def _table(subject: Subject) -> tuple[Table, Column[str]]:
    return _TABLES[subject]


def table_name(subject: Subject) -> str:
    """The name of the subject's table (``shop_events_carts`` …)."""
    return _table(subject)[0].name


def key_of(subject: Subject, row: Row) -> str:
    """The row's key (cart id, browse key, registration email)."""
    _, key = _table(subject)
    return str(row._mapping[key.name])


def _due(table: Table, now: datetime, after: Any, step: int) -> ColumnElement[bool]:
    if step == 1:
        stage = table.c.state == FlowState.ACTIVE.value
    else:  # the literal, so that the partial index of abandoned rows serves it
        stage = and_(table.c.state == literal_column(ABANDONED), table.c.step == step - 1)
    return and_(stage, table.c.last_activity_at <= now - after)


def take_due(
    conn: Connection, subject: Subject, now: datetime, after: Any, limit: int, step: int = 1
) -> list[Row]:
    """Take up to ``limit`` rows whose reminder ``step`` is due (idle for ``after``); the rows.

    Step 1 moves ``active`` rows to ``abandoned``; a later step takes ``abandoned`` rows whose
    step before it was queued. One conditional ``UPDATE … RETURNING`` over a locked batch: two
    scanners racing never take the same row, and a row touched meanwhile is not due any more.
    """
    table, key = _table(subject)
    due = _due(table, now, after, step)
    batch = select(key).where(due).order_by(table.c.last_activity_at).limit(limit)
    values = {"state": FlowState.ABANDONED.value, "step": step}
    return update_returning(conn, table, due, values, list(table.c), batch=batch)


def set_outcome(
    conn: Connection, subject: Subject, key_value: str, state: FlowState, reason: SkipReason
) -> None:
    """Record what became of a due row that emitted nothing, and why (``skip_reason``)."""
    table, key = _table(subject)
    conn.execute(
        update(table).where(key == key_value).values(state=state.value, skip_reason=reason.value)
    )


def get(conn: Connection, subject: Subject, key_value: str) -> Row | None:
    """The row of this subject, or None."""
    table, key = _table(subject)
    return conn.execute(select(table).where(key == key_value)).first()


def waiting(conn: Connection, subject: Subject, limit: int) -> list[Row]:
    """Up to ``limit`` rows still ``active`` (waiting to come due), the longest idle first."""
    table, _ = _table(subject)
    query = (
        select(table)
        .where(table.c.state == FlowState.ACTIVE.value)
        .order_by(table.c.last_activity_at.asc())
        .limit(limit)
    )
    return list(conn.execute(query).all())


def count_in_state(conn: Connection, subject: Subject, state: FlowState) -> int:
    """How many rows of this subject are in ``state``."""
    table, _ = _table(subject)
    query = select(func.count()).select_from(table).where(table.c.state == state.value)
    return int(conn.execute(query).scalar_one())


def count_by_state(conn: Connection, subject: Subject) -> dict[str, int]:
    """How many rows of this subject are in each state (states with none are left out)."""
    table, _ = _table(subject)
    grouped = conn.execute(select(table.c.state, func.count()).group_by(table.c.state))
    return {str(state): int(count) for state, count in grouped}


def count_suppressed_by_reason(conn: Connection, subject: Subject) -> dict[str, int]:
    """How many rows of this subject are ``suppressed``, by ``skip_reason`` (none: left out)."""
    table, _ = _table(subject)
    grouped = conn.execute(
        select(table.c.skip_reason, func.count())
        .where(table.c.state == FlowState.SUPPRESSED.value)
        .group_by(table.c.skip_reason)
    )
    return {str(reason): int(count) for reason, count in grouped}


def recent(conn: Connection, subject: Subject, limit: int) -> list[Row]:
    """Up to ``limit`` rows in any state, the most recently active first."""
    table, _ = _table(subject)
    query = select(table).order_by(table.c.last_activity_at.desc()).limit(limit)
    return list(conn.execute(query).all())


def delete_finished_before(conn: Connection, subject: Subject, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` finished rows last active before ``cutoff``; how many."""
    table, _ = _table(subject)
    finished = and_(
        table.c.last_activity_at < cutoff,
        table.c.state.in_([s.value for s in FINISHED_STATES]),
    )
    return delete_some(conn, table, finished, limit)

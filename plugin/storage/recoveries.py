"""The recoveries table: orders credited to the reminder that brought them back.

An order is recovered when its contact (or its cart) got a reminder delivered within
``recovery.attribution_window`` before it; it is credited once, to the last such reminder, and
marked clicked when a link of that reminder's sequence was opened before the order.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, or_, select

from . import reminders
from .engines import delete_some, insert_new
from .person import Person
from .tables import recoveries

TABLE = recoveries.name


@dataclasses.dataclass(frozen=True)
class Recovered:
    """One order credited to a reminder."""

    order_id: str
    flow: str
    step: int
    revenue: Decimal
    currency: str | None
    ordered_at: datetime
    clicked: bool


def credit(
    conn: Connection,
    *,
    order_id: str,
    email: str,
    cart_id: str | None,
    revenue: str,
    currency: str | None,
    now: datetime,
    window: timedelta,
) -> bool:
    """Credit the order to the last reminder of its contact or cart delivered within ``window``
    before ``now``; False when there is none (or the order was credited already)."""
    reminder = reminders.last_delivered(conn, email, cart_id, now - window, now)
    if reminder is None:
        return False
    row = {
        "order_id": order_id,
        "reminder_key": reminder.dedupe_key,
        "flow": reminder.flow,
        "step": reminder.step,
        "email": email,
        "cart_id": cart_id,
        "revenue": revenue,
        "currency": currency,
        "reminded_at": reminder.delivered_at,
        "ordered_at": now,
        "clicked": reminders.sequence_clicked(conn, reminder, now),
    }
    return bool(insert_new(conn, recoveries, [row], recoveries.c.order_id))


def between(conn: Connection, since: datetime, until: datetime) -> list[Recovered]:
    """The orders recovered in ``[since, until)``, oldest first."""
    query = (
        select(recoveries)
        .where(recoveries.c.ordered_at >= since, recoveries.c.ordered_at < until)
        .order_by(recoveries.c.ordered_at)
    )
    return [_recovered(row) for row in conn.execute(query)]


def _recovered(row: Any) -> Recovered:
    return Recovered(
        order_id=row.order_id,
        flow=row.flow,
        step=int(row.step),
        revenue=Decimal(row.revenue),
        currency=row.currency,
        ordered_at=row.ordered_at,
        clicked=bool(row.clicked),
    )


def delete_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` recoveries of orders placed before ``cutoff``; how many."""
    return delete_some(conn, recoveries, recoveries.c.ordered_at < cutoff, limit)


def _theirs(person: Person) -> ColumnElement[bool]:
    return or_(
        recoveries.c.email == person.email,
        recoveries.c.order_id.in_(person.order_ids),
        recoveries.c.cart_id.in_(person.cart_ids),
    )


def held(conn: Connection, person: Person) -> list[Any]:
    """The person's orders credited to a reminder, oldest first."""
    query = (
        select(recoveries)
        .where(_theirs(person))
        .order_by(recoveries.c.ordered_at, recoveries.c.order_id)
    )
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's recovered orders; how many."""
    return int(conn.execute(delete(recoveries).where(_theirs(person))).rowcount)

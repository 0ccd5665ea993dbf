"""Frequency caps: at most one event of a marketing flow per contact per interval.

The cap is a row per (flow, contact) taken with one conditional upsert, so two scanners racing
for two carts of the same shopper cannot both pass it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, func, select

from .engines import delete_some, upsert_where
from .person import Person
from .tables import caps

TABLE = caps.name


def take(conn: Connection, flow: str, contact: str, now: datetime, interval: timedelta) -> bool:
    """Take the contact's slot for ``flow``; False if it was taken within ``interval``."""
    if interval <= timedelta(0):
        return True
    return upsert_where(
        conn,
        caps,
        {"flow": flow, "contact": contact, "last_at": now},
        {"last_at": now},
        where=caps.c.last_at <= now - interval,
    )


def give_back(conn: Connection, flow: str, contact: str, taken_at: datetime) -> None:
    """Undo :func:`take` for an event that was never sent, unless a later one took the slot."""
    conn.execute(
        delete(caps).where(
            and_(caps.c.flow == flow, caps.c.contact == contact, caps.c.last_at == taken_at)
        )
    )


def delete_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` caps last taken before ``cutoff``; how many."""
    return delete_some(conn, caps, caps.c.last_at < cutoff, limit)


def _theirs(person: Person) -> ColumnElement[bool]:
    return func.lower(caps.c.contact) == person.email


def held(conn: Connection, person: Person) -> list[Any]:
    """When the person was last sent each marketing flow."""
    query = select(caps).where(_theirs(person)).order_by(caps.c.flow)
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's frequency caps; how many."""
    return int(conn.execute(delete(caps).where(_theirs(person))).rowcount)

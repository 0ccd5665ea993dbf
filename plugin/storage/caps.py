"""Frequency caps: at most one event of a marketing flow per contact per interval.

The cap is a row per (flow, contact) taken with one conditional upsert, so two scanners racing
for two carts of the same shopper cannot both pass it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, delete, select, tuple_

from .engines import upsert
from .tables import caps

TABLE = caps.name


def take(conn: Connection, flow: str, contact: str, now: datetime, interval: timedelta) -> bool:
    """Take the contact's slot for ``flow``; False if it was taken within ``interval``."""
    if interval <= timedelta(0):
        return True
    insert = upsert(conn, caps).values(flow=flow, contact=contact, last_at=now)
    taken = insert.on_conflict_do_update(
        index_elements=[caps.c.flow, caps.c.contact],
        set_={"last_at": insert.excluded.last_at},
        where=caps.c.last_at <= now - interval,
    ).returning(caps.c.contact)
    return conn.execute(taken).first() is not None


def give_back(conn: Connection, flow: str, contact: str, taken_at: datetime) -> None:
    """Undo :func:`take` for an event that was never sent, unless a later one took the slot."""
    conn.execute(
        delete(caps).where(
            and_(caps.c.flow == flow, caps.c.contact == contact, caps.c.last_at == taken_at)
        )
    )


def delete_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` caps last taken before ``cutoff``; how many."""
    pairs = select(caps.c.flow, caps.c.contact).where(caps.c.last_at < cutoff).limit(limit)
    return conn.execute(delete(caps).where(tuple_(caps.c.flow, caps.c.contact).in_(pairs))).rowcount

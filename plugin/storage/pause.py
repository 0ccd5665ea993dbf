"""Delivery pause shared by every process: set on 401/403, so a bad key spends no attempts.

While paused, no worker claims anything. When the pause ends, the key is checked without any
event: a good key clears the pause, a refused one renews it. Without a verdict from that check,
one event is sent as a probe; its success clears the pause, another 401 renews it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import Connection, delete, select, text

from .engines import upsert
from .tables import runtime_state

PAUSE = "delivery_paused"


@dataclasses.dataclass(frozen=True)
class Pause:
    """Why delivery is paused and until when."""

    reason: str
    until: datetime
    since: datetime

    def active(self, now: datetime) -> bool:
        """True while no worker may send."""
        return now < self.until


def current(conn: Connection) -> Pause | None:
    """The pause in force or expired-but-not-yet-probed, if any."""
    row = conn.execute(
        select(runtime_state.c.value, runtime_state.c.until, runtime_state.c.updated_at).where(
            runtime_state.c.name == PAUSE
        )
    ).first()
    if row is None:
        return None
    return Pause(reason=row.value or "", until=row.until, since=row.updated_at)


PAUSE_LOCK_ID = 0x5E0E0401
"""The PostgreSQL advisory lock that orders concurrent decisions to pause delivery."""


def pause(conn: Connection, reason: str, now: datetime, until: datetime) -> bool:
    """Pause delivery; True if it was not already paused (so the caller logs once per pause).

    Concurrent 401s in several threads and processes are decided one at a time, so only the
    first sees no pause: on PostgreSQL two transactions would otherwise both see none before
    either commits (an advisory lock, released at commit); SQLite's ``BEGIN IMMEDIATE``
    already serialises them.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": PAUSE_LOCK_ID})
    before = current(conn)
    stmt = upsert(conn, runtime_state).values(name=PAUSE, value=reason, until=until, updated_at=now)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[runtime_state.c.name],
            set_={"value": reason, "until": until, "updated_at": now},
        )
    )
    return before is None or not before.active(now)


def resume(conn: Connection) -> bool:
    """Clear the pause (a probe succeeded, or the operator fixed the key); True if there was one."""
    return conn.execute(delete(runtime_state).where(runtime_state.c.name == PAUSE)).rowcount > 0

"""The registrations table: sign-ups started and not (yet) completed.

Every statement that is the registrations' own lives here (the lifecycle the three activity
tables share is in :mod:`.activity`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, delete, select, update

from .engines import upsert
from .enums import FlowState
from .person import Person
from .tables import registrations

TABLE = registrations.name


def start(conn: Connection, email: str, params: str, now: datetime) -> None:
    """A sign-up began (or began again): active, a new version if the last one had ended."""
    active = registrations.c.state == FlowState.ACTIVE.value
    conn.execute(
        upsert(
            conn,
            registrations,
            {
                "email": email,
                "params": params,
                "version": 1,
                "state": FlowState.ACTIVE.value,
                "skip_reason": None,
                "last_activity_at": now,
            },
            update=[  # the version reads the state: set before it
                ("params", params),
                (
                    "version",
                    case((active, registrations.c.version), else_=registrations.c.version + 1),
                ),
                ("state", FlowState.ACTIVE.value),
                ("skip_reason", None),
                ("last_activity_at", now),
            ],
        )
    )


def complete(conn: Connection, email: str, now: datetime) -> None:
    """The sign-up finished: no reminder."""
    conn.execute(
        update(registrations)
        .where(registrations.c.email == email)
        .values(state=FlowState.COMPLETED.value, last_activity_at=now)
    )


def held(conn: Connection, person: Person) -> list[Any]:
    """The person's registration, if any (a list of at most one row)."""
    query = select(registrations).where(registrations.c.email == person.email)
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's registration; how many rows (0 or 1)."""
    gone = delete(registrations).where(registrations.c.email == person.email)
    return int(conn.execute(gone).rowcount)

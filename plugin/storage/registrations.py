"""The registrations table: sign-ups started and not (yet) completed.

Every statement that is the registrations' own lives here (the lifecycle the three activity
tables share is in :mod:`.activity`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, case, update

from .engines import upsert
from .enums import FlowState
from .tables import registrations


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

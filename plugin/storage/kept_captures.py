"""The kept captures table: captures that could not complete, kept to be tried again.

An order whose total cannot be read at the commit that adds its lines is not dropped: it is
kept here (in the same transaction as the shop's commit when the plugin shares its database)
and tried again at the next commit that touches it, in any process; once placed its row goes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, func, select, tuple_

from .capture_errors import MESSAGE_MAX
from .engines import upsert
from .person import Person, mentions
from .tables import kept_captures

TABLE = kept_captures.name


@dataclasses.dataclass(frozen=True)
class KeptCapture:
    """One capture waiting to be tried again."""

    mapping: str
    model: str
    subject_key: str
    subject: str
    """What it is (``the order 7``)."""
    attempts: int
    last_field: str
    last_error: str
    first_at: datetime
    last_at: datetime


def keep(
    conn: Connection,
    *,
    mapping: str,
    model: str,
    subject_key: str,
    subject: str,
    field: str,
    error: str,
    now: datetime,
) -> None:
    """Keep the capture of ``subject_key`` (or count one more failed attempt of it)."""
    values = {
        "model": model[:100],
        "subject_key": subject_key[:300],
        "mapping": mapping[:32],
        "subject": subject[:300],
        "attempts": 1,
        "last_field": field[:100],
        "last_error": error[:MESSAGE_MAX],
        "first_at": now,
        "last_at": now,
    }
    conn.execute(
        upsert(
            conn,
            kept_captures,
            values,
            update=lambda new: {
                "attempts": kept_captures.c.attempts + 1,
                "subject": new.subject,
                "last_field": new.last_field,
                "last_error": new.last_error,
                "last_at": new.last_at,
            },
        )
    )


def release(conn: Connection, model: str, subject_key: str) -> None:
    """The capture completed (or its row is gone): nothing to try again."""
    conn.execute(
        delete(kept_captures).where(
            kept_captures.c.model == model, kept_captures.c.subject_key == subject_key
        )
    )


def which(conn: Connection, model: str, subject_keys: Sequence[str]) -> set[str]:
    """Which of ``subject_keys`` of ``model`` are kept."""
    if not subject_keys:
        return set()
    return set(
        conn.execute(
            select(kept_captures.c.subject_key).where(
                tuple_(kept_captures.c.model, kept_captures.c.subject_key).in_(
                    [(model, key) for key in subject_keys]
                )
            )
        ).scalars()
    )


def oldest(conn: Connection, limit: int) -> list[KeptCapture]:
    """The kept captures waiting longest, at most ``limit``."""
    rows = conn.execute(
        select(kept_captures)
        .order_by(kept_captures.c.first_at, kept_captures.c.model, kept_captures.c.subject_key)
        .limit(limit)
    ).all()
    return [
        KeptCapture(
            mapping=row.mapping,
            model=row.model,
            subject_key=row.subject_key,
            subject=row.subject,
            attempts=row.attempts,
            last_field=row.last_field,
            last_error=row.last_error,
            first_at=row.first_at,
            last_at=row.last_at,
        )
        for row in rows
    ]


def count(conn: Connection) -> int:
    """How many captures are kept."""
    return int(conn.execute(select(func.count()).select_from(kept_captures)).scalar_one())


def _mentioning(person: Person) -> ColumnElement[bool]:
    text = (kept_captures.c.subject_key, kept_captures.c.subject, kept_captures.c.last_error)
    return mentions(text, person)


def held(conn: Connection, person: Person) -> list[Any]:
    """The kept captures whose key, subject or message mentions the person's address."""
    query = select(kept_captures).where(_mentioning(person)).order_by(kept_captures.c.first_at)
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the kept captures that mention the person's address (tried again, they would
    store the person anew); how many."""
    return int(conn.execute(delete(kept_captures).where(_mentioning(person))).rowcount)


__all__ = [
    "TABLE",
    "KeptCapture",
    "count",
    "forget",
    "held",
    "keep",
    "oldest",
    "release",
    "which",
]

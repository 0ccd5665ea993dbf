"""The capture errors table: failed captures counted per mapping and field, newest message kept.

One row per (mapping, field), so the table stays as small as the mappings however often a
capture fails; ``shop-events status`` and the health page list the rows most recent first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from ..payload.address_forms import redact as redacted
from .engines import upsert
from .person import Person, mentions
from .tables import capture_errors

TABLE = capture_errors.name
MESSAGE_MAX = 1000
"""Longer messages are cut: the row is for a person to read."""


@dataclasses.dataclass(frozen=True)
class CaptureError:
    """Failures of one mapping's field: how many, when first and last, and the newest one."""

    mapping: str
    """``cart``, ``order`` or ``customer``."""
    field: str
    """The mapping's field (``item``, ``total`` …) or the refused value (``items[].price``)."""
    count: int
    first_at: datetime
    last_at: datetime
    last_subject: str | None
    """What was being captured (``the order 7``)."""
    last_error: str


def record(conn: Connection, errors: Iterable[CaptureError]) -> None:
    """Add each error's ``count`` to its (mapping, field) row, keeping its newest message."""
    for error in errors:
        values = {
            "mapping": error.mapping[:32],
            "field": error.field[:100],
            "failures": error.count,
            "first_at": error.first_at,
            "last_at": error.last_at,
            "last_subject": None if error.last_subject is None else error.last_subject[:300],
            "last_error": error.last_error[:MESSAGE_MAX],
        }
        conn.execute(
            upsert(
                conn,
                capture_errors,
                values,
                update=lambda new: {
                    "failures": capture_errors.c.failures + new.failures,
                    "last_at": new.last_at,
                    "last_subject": new.last_subject,
                    "last_error": new.last_error,
                },
            )
        )


def newest(conn: Connection, limit: int) -> list[CaptureError]:
    """The (mapping, field) rows that failed most recently, newest first, at most ``limit``."""
    rows = conn.execute(
        select(capture_errors)
        .order_by(capture_errors.c.last_at.desc(), capture_errors.c.mapping, capture_errors.c.field)
        .limit(limit)
    ).all()
    return [
        CaptureError(
            mapping=row.mapping,
            field=row.field,
            count=row.failures,
            first_at=row.first_at,
            last_at=row.last_at,
            last_subject=row.last_subject,
            last_error=row.last_error,
        )
        for row in rows
    ]


def total(conn: Connection) -> int:
    """How many captures failed, all mappings and fields together."""
    found = conn.execute(select(func.coalesce(func.sum(capture_errors.c.failures), 0)))
    return int(found.scalar_one())


def _mentioning(person: Person) -> Any:
    text = (capture_errors.c.field, capture_errors.c.last_subject, capture_errors.c.last_error)
    return select(capture_errors).where(mentions(text, person))


def held(conn: Connection, person: Person) -> list[Any]:
    """The rows whose field, subject or message mentions the person's address."""
    return list(conn.execute(_mentioning(person)))


def redact(conn: Connection, person: Person) -> int:
    """Blank the person's address out of the rows that mention it, keeping their counts (an
    operator still sees that captures failed, and why); how many rows."""
    rows = held(conn, person)
    for row in rows:
        conn.execute(
            update(capture_errors)
            .where(capture_errors.c.mapping == row.mapping, capture_errors.c.field == row.field)
            .values(
                last_subject=None
                if row.last_subject is None
                else redacted(row.last_subject, person.forms),
                last_error=redacted(row.last_error, person.forms),
            )
        )
    return len(rows)


__all__ = [
    "MESSAGE_MAX",
    "TABLE",
    "CaptureError",
    "held",
    "newest",
    "record",
    "redact",
    "total",
]

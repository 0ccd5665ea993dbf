"""The visitors table: which contact an anonymous visitor id turned out to be."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, select

from .engines import upsert
from .person import Person
from .tables import visitors

TABLE = visitors.name


def remember(conn: Connection, visitor_id: str, email: str, now: datetime) -> None:
    """The visitor is this contact (the latest identification wins)."""
    values = {"visitor_id": visitor_id, "email": email, "updated_at": now}
    conn.execute(upsert(conn, visitors, values, update={"email": email, "updated_at": now}))


def known_email(conn: Connection, visitor_id: str) -> str | None:
    """The contact this visitor was identified as, if any."""
    found: str | None = conn.execute(
        select(visitors.c.email).where(visitors.c.visitor_id == visitor_id)
    ).scalar()
    return found


def identified_as(conn: Connection, email: str) -> tuple[str, ...]:
    """The visitor ids identified as this contact."""
    found = select(visitors.c.visitor_id).where(visitors.c.email == email)
    return tuple(conn.execute(found.order_by(visitors.c.visitor_id)).scalars())


def _theirs(person: Person) -> ColumnElement[bool]:
    return visitors.c.email == person.email


def held(conn: Connection, person: Person) -> list[Any]:
    """The person's identity links."""
    query = select(visitors).where(_theirs(person)).order_by(visitors.c.visitor_id)
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's identity links; how many."""
    return int(conn.execute(delete(visitors).where(_theirs(person))).rowcount)

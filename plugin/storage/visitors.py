"""The visitors table: which contact an anonymous visitor id turned out to be."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from .engines import upsert
from .tables import visitors


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

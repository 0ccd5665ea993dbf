"""The consent table: who withdrew (or gave back) consent to marketing."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, select

from .engines import upsert
from .tables import consent


def record(conn: Connection, email: str, opted_out: bool, now: datetime) -> None:
    """The contact's latest choice."""
    values = {"email": email, "opted_out": opted_out, "updated_at": now}
    conn.execute(upsert(conn, consent, values, update={"opted_out": opted_out, "updated_at": now}))


def opted_out(conn: Connection, emails: Iterable[str]) -> set[str]:
    """Which of these contacts withdrew consent to marketing."""
    wanted = {email.lower() for email in emails}
    if not wanted:
        return set()
    return set(
        conn.execute(
            select(consent.c.email).where(consent.c.email.in_(wanted), consent.c.opted_out)
        ).scalars()
    )

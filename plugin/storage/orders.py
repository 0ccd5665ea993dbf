"""The orders table: orders seen, so a later status change knows its contact and products."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, or_, select, update

from .engines import delete_some, upsert
from .person import Person
from .tables import orders

TABLE = orders.name


def store(
    conn: Connection, order_id: str, email: str, status: str, payload: str, now: datetime
) -> None:
    """Remember a placed order (placing it again replaces what was stored)."""
    values = {
        "order_id": order_id,
        "email": email,
        "status": status,
        "payload": payload,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(
        upsert(
            conn,
            orders,
            values,
            update=lambda new: {
                "email": email,
                "status": status,
                "payload": new.payload,
                "updated_at": now,
            },
        )
    )


def get(conn: Connection, order_id: str) -> Any:
    """The stored order (``email``, ``status``, ``payload``), or None."""
    return conn.execute(select(orders).where(orders.c.order_id == order_id)).first()


def set_status(conn: Connection, order_id: str, status: str, now: datetime) -> None:
    """The order moved on to ``status``."""
    conn.execute(
        update(orders).where(orders.c.order_id == order_id).values(status=status, updated_at=now)
    )


def statuses(conn: Connection, order_ids: Iterable[str]) -> dict[str, str]:
    """The stored status of each of these orders that is known."""
    ids = list(order_ids)
    if not ids:
        return {}
    known = select(orders.c.order_id, orders.c.status).where(orders.c.order_id.in_(ids))
    rows = conn.execute(known)
    return {row.order_id: row.status for row in rows}


def delete_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` orders last changed before ``cutoff``; how many."""
    return delete_some(conn, orders, orders.c.updated_at < cutoff, limit)


def placed_by(conn: Connection, email: str) -> tuple[str, ...]:
    """The ids of the orders of this contact."""
    query = select(orders.c.order_id).where(orders.c.email == email).order_by(orders.c.order_id)
    return tuple(conn.execute(query).scalars())


def _theirs(person: Person) -> ColumnElement[bool]:
    return or_(orders.c.email == person.email, orders.c.order_id.in_(person.order_ids))


def held(conn: Connection, person: Person) -> list[Any]:
    """The person's orders, whole."""
    query = select(orders).where(_theirs(person)).order_by(orders.c.created_at, orders.c.order_id)
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's orders; how many."""
    return int(conn.execute(delete(orders).where(_theirs(person))).rowcount)

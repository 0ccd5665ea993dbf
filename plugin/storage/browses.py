"""The browses table: products a shopper viewed, keyed ``e:<email>`` or ``v:<visitor id>``.

Every statement that is the browses' own lives here (the lifecycle the three activity tables
share is in :mod:`.activity`). How views merge is the caller's rule, passed in as ``merge``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, insert, or_, select, update

from ..errors import StorageError
from ..payload.validation import dump_json
from .engines import insert_new
from .enums import OPEN_STATES, FlowState, SkipReason
from .person import Person
from .tables import browses

TABLE = browses.name

Views = list[dict[str, Any]]
Merge = Callable[[Views, Views], Views]
"""``merge(newer, older)``: the views to keep, most recent first."""
MAX_RETRIES = 5


def email_key(email: str) -> str:
    """The browse key of a known contact."""
    return f"e:{email}"


def visitor_key(visitor_id: str) -> str:
    """The browse key of a visitor not yet identified."""
    return f"v:{visitor_id}"


def record_view(
    conn: Connection,
    key: str,
    email: str | None,
    visitor_id: str | None,
    viewed: dict[str, Any],
    merge: Merge,
    now: datetime,
) -> None:
    """Add a viewed product to the browse under ``key``; a browse that had ended starts anew.

    Optimistic: a row changed by another writer meanwhile is read again (a few times at most).
    """
    for _ in range(MAX_RETRIES):
        row = conn.execute(select(browses).where(browses.c.browse_key == key)).first()
        if row is None:
            new = {
                "browse_key": key,
                "email": email,
                "visitor_id": visitor_id,
                "items": dump_json([viewed]),
                "version": 1,
                "state": FlowState.ACTIVE.value,
                "started_at": now,
                "last_activity_at": now,
            }
            if insert_new(conn, browses, [new], browses.c.browse_key):
                return
            continue
        values: dict[str, object]
        if row.state == FlowState.ACTIVE.value:
            values = {"items": dump_json(merge([viewed], json.loads(row.items)))}
        else:  # a new browse after the last one ended
            values = {
                "items": dump_json([viewed]),
                "version": row.version + 1,
                "state": FlowState.ACTIVE.value,
                "skip_reason": None,
                "started_at": now,
            }
        changed = conn.execute(
            update(browses)
            .where(
                browses.c.browse_key == key,
                browses.c.version == row.version,
                browses.c.last_activity_at == row.last_activity_at,
            )
            .values(last_activity_at=now, visitor_id=row.visitor_id or visitor_id, **values)
        )
        if changed.rowcount:
            return
    raise StorageError(f"product_viewed: the browse of {key!r} kept changing; try again")


def follow_contact(conn: Connection, visitor_id: str, email: str, merge: Merge) -> None:
    """The visitor's anonymous browse becomes (or joins) the contact's browse."""
    anonymous = conn.execute(
        select(browses).where(browses.c.browse_key == visitor_key(visitor_id))
    ).first()
    if anonymous is None:
        return
    known = conn.execute(select(browses).where(browses.c.browse_key == email_key(email))).first()
    conn.execute(delete(browses).where(browses.c.browse_key == visitor_key(visitor_id)))
    if known is None:
        values = dict(anonymous._mapping)
        values.update(browse_key=email_key(email), email=email)
        if (
            values["state"] == FlowState.SUPPRESSED.value
            and values["skip_reason"] == SkipReason.NO_CONTACT.value
        ):
            values.update(state=FlowState.ACTIVE.value, skip_reason=None)
        conn.execute(insert(browses).values(**values))
        return
    newer, older = sorted((anonymous, known), key=lambda r: r.last_activity_at, reverse=True)
    items = merge(json.loads(newer.items), json.loads(older.items))
    active = FlowState.ACTIVE.value in (anonymous.state, known.state)
    conn.execute(
        update(browses)
        .where(browses.c.browse_key == email_key(email))
        .values(
            items=dump_json(items),
            visitor_id=visitor_id,
            last_activity_at=newer.last_activity_at,
            started_at=min(anonymous.started_at, known.started_at),
            **_rearmed(known, active),
        )
    )


def convert(conn: Connection, email: str) -> None:
    """An order: the contact's open browse stops being a candidate."""
    conn.execute(
        update(browses)
        .where(browses.c.email == email, browses.c.state.in_([s.value for s in OPEN_STATES]))
        .values(state=FlowState.CONVERTED.value)
    )


def keys_of(person: Person) -> tuple[str, ...]:
    """The browse keys the person's views may be under: the address's and its visitors'."""
    return (email_key(person.email), *(visitor_key(v) for v in person.visitor_ids))


def _theirs(person: Person) -> ColumnElement[bool]:
    return or_(browses.c.browse_key.in_(keys_of(person)), browses.c.email == person.email)


def held(conn: Connection, person: Person) -> list[Any]:
    """The person's browses, whole."""
    query = select(browses).where(_theirs(person)).order_by(browses.c.browse_key)
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's browses; how many."""
    return int(conn.execute(delete(browses).where(_theirs(person))).rowcount)


def _rearmed(known: Any, active: bool) -> dict[str, Any]:
    if not active or known.state == FlowState.ACTIVE.value:
        return {}
    return {"state": FlowState.ACTIVE.value, "version": known.version + 1, "skip_reason": None}

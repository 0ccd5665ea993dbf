"""The carts table: every statement that is the carts' own (the lifecycle the three activity
tables share is in :mod:`.activity`).

A cart is stored whole at each change, with a hash of its contents: a changed cart becomes a
new version, so each version is reminded at most once.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    update,
)

from .engines import upsert
from .enums import OPEN_STATES, FlowState, SkipReason
from .person import Person
from .prepared import Prepared
from .savepoint import DEFERRABLE
from .tables import UTCDateTime, carts

TABLE = carts.name

EMPTY = json.dumps([])
EMPTY_HASH = hashlib.sha256(f"{EMPTY}|".encode()).hexdigest()


def content_hash(snapshot: str, currency: str | None) -> str:
    """What tells two versions of a cart apart: its items and its currency."""
    return hashlib.sha256(f"{snapshot}|{currency or ''}".encode()).hexdigest()


def record(
    conn: Connection,
    *,
    cart_id: str,
    email: str | None,
    visitor_id: str | None,
    items: str,
    currency: str | None,
    restore_url: str | None,
    now: datetime,
) -> None:
    """Store the whole cart (``items`` is its JSON snapshot) as of ``now``."""
    _UPSERT.execute(
        conn,
        {
            "cart_id": cart_id,
            "email": email,
            "visitor_id": visitor_id,
            "items": items,
            "currency": currency,
            "restore_url": restore_url,
            "content_hash": content_hash(items, currency),
            "now": now,
        },
    )


def clear(conn: Connection, cart_id: str, now: datetime) -> None:
    """The cart was emptied: a new, empty version that is never reminded."""
    conn.execute(
        update(carts)
        .where(carts.c.cart_id == cart_id)
        .values(
            state=FlowState.CLEARED.value,
            items=EMPTY,
            content_hash=EMPTY_HASH,
            version=carts.c.version + 1,
            last_activity_at=now,
        )
    )


def reject(conn: Connection, cart_id: str, now: datetime) -> bool:
    """The cart's current state could not be captured: an open cart is ``suppressed`` (reason
    ``invalid``) so that its older state is never reminded, until a valid state re-arms it. A
    reminder already queued for it is dropped at send time. False when no open cart was there.
    """
    done = conn.execute(
        update(carts)
        .where(carts.c.cart_id == cart_id, carts.c.state.in_([s.value for s in OPEN_STATES]))
        .values(
            state=FlowState.SUPPRESSED.value,
            skip_reason=SkipReason.INVALID.value,
            last_activity_at=now,
        )
    )
    return bool(done.rowcount)


def convert(conn: Connection, email: str, cart_id: str | None = None) -> None:
    """An order: every open cart of the contact (and ``cart_id``) stops being a candidate."""
    owner: ColumnElement[bool] = carts.c.email == email
    if cart_id is not None:
        owner = or_(owner, carts.c.cart_id == cart_id)
    conn.execute(
        update(carts)
        .where(owner, carts.c.state.in_([s.value for s in OPEN_STATES]))
        .values(state=FlowState.CONVERTED.value)
    )


def give_email(conn: Connection, visitor_id: str, email: str) -> None:
    """The visitor's anonymous carts get the contact; one suppressed for lack of it re-arms."""
    anonymous = (carts.c.visitor_id == visitor_id) & carts.c.email.is_(None)
    # two statements: MySQL would read the state the first assignment set, not the stored one
    conn.execute(
        update(carts)
        .where(
            anonymous,
            carts.c.state == FlowState.SUPPRESSED.value,
            carts.c.skip_reason == SkipReason.NO_CONTACT.value,
        )
        .values(state=FlowState.ACTIVE.value, skip_reason=None)
    )
    conn.execute(update(carts).where(anonymous).values(email=email))


def carted_since(
    conn: Connection, email: str | None, visitor_id: str | None, since: datetime
) -> bool:
    """Whether the contact or the visitor touched a cart at or after ``since``."""
    owner = [carts.c.email == email] if email else []
    if visitor_id:
        owner.append(carts.c.visitor_id == visitor_id)
    if not owner:
        return False
    found = conn.execute(
        select(exists().where(or_(*owner), carts.c.last_activity_at >= since))
    ).scalar()
    return bool(found)


def owned_by(conn: Connection, email: str, visitor_ids: tuple[str, ...]) -> tuple[str, ...]:
    """The ids of the carts of this contact or of these visitors (identified as it)."""
    owner = or_(carts.c.email == email, carts.c.visitor_id.in_(visitor_ids))
    query = select(carts.c.cart_id).where(owner).order_by(carts.c.cart_id)
    return tuple(conn.execute(query).scalars())


def _theirs(person: Person) -> ColumnElement[bool]:
    return or_(
        carts.c.email == person.email,
        carts.c.visitor_id.in_(person.visitor_ids),
        carts.c.cart_id.in_(person.cart_ids),
    )


def held(conn: Connection, person: Person) -> list[Any]:
    """The person's carts, whole."""
    return list(conn.execute(select(carts).where(_theirs(person)).order_by(carts.c.cart_id)))


def forget(conn: Connection, person: Person) -> int:
    """Delete the person's carts; how many."""
    return int(conn.execute(delete(carts).where(_theirs(person))).rowcount)


def _upsert(dialect: str) -> Insert:
    """The cart upsert: prepared (``_UPSERT``), as it runs in every captured commit of the host.

    A changed cart becomes a new version and (again) ``active``; an unchanged one only records
    the activity, so a shopper who looks at an abandoned cart does not re-arm it. A cart
    suppressed because its last state was refused is re-armed by any valid state.
    """
    now = bindparam("now", type_=UTCDateTime)
    # constants are written into the SQL, so each call binds only the cart's own values
    active: ColumnElement[str] = literal_column(f"'{FlowState.ACTIVE.value}'")
    no_contact: ColumnElement[str] = literal_column(f"'{SkipReason.NO_CONTACT.value}'")
    invalid: ColumnElement[str] = literal_column(f"'{SkipReason.INVALID.value}'")

    def assignments(new: Any) -> list[tuple[str, Any]]:
        # in this order: on MySQL each assignment sees those before it, so what the version,
        # the state and the skip reason read (the hash, the state, the reason) is set after
        changed = carts.c.content_hash != new.content_hash
        newly_reachable = (carts.c.skip_reason == no_contact) & new.email.is_not(None)
        valid_again = carts.c.skip_reason == invalid
        # an active cart has no skip reason, so the state's own test is left out of the reason's
        rearm_reason = or_(changed, newly_reachable, valid_again)
        return [
            (
                "version",
                case((changed, carts.c.version + literal_column("1")), else_=carts.c.version),
            ),
            (
                "state",
                case((or_(rearm_reason, carts.c.state == active), active), else_=carts.c.state),
            ),
            ("skip_reason", case((rearm_reason, null()), else_=carts.c.skip_reason)),
            ("email", func.coalesce(new.email, carts.c.email)),
            ("visitor_id", func.coalesce(new.visitor_id, carts.c.visitor_id)),
            ("items", new["items"]),
            ("currency", new.currency),
            ("restore_url", func.coalesce(new.restore_url, carts.c.restore_url)),
            ("content_hash", new.content_hash),
            ("last_activity_at", new.last_activity_at),
        ]

    values = {
        **{name: bindparam(name) for name in _PARAMS},
        "version": literal_column("1"),
        "state": active,
        "skip_reason": null(),
        "step": literal_column("0"),
        "last_activity_at": now,
        "created_at": now,
    }
    upserted = upsert(dialect, carts, values, update=assignments)
    # its result is not read: on the host's connection it may go with the host's commit
    return upserted.execution_options(**{DEFERRABLE: True})


_UPSERT = Prepared(_upsert)

_PARAMS = ("cart_id", "email", "visitor_id", "items", "currency", "restore_url", "content_hash")

__all__ = [
    "EMPTY",
    "TABLE",
    "carted_since",
    "clear",
    "content_hash",
    "convert",
    "forget",
    "give_email",
    "held",
    "owned_by",
    "record",
    "reject",
]

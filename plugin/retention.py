"""Retention: finished activity and sent events older than ``retention.days`` are deleted in
batches by a scheduled job. Dead letters stay until replayed or purged on purpose; active carts,
browses and registrations and consent records are never purged.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    delete,
    select,
    tuple_,
)

from .config import RetentionSettings
from .storage.enums import FlowState, OutboxStatus
from .storage.tables import browses, caps, carts, orders, outbox, registrations

MAX_BATCHES = 10_000


@dataclasses.dataclass(frozen=True)
class Target:
    """Rows of one table that may go: older than the cutoff by ``age`` and matching ``where``."""

    table: Table
    key: Column[object]
    age: Column[datetime]
    finished: tuple[str, ...] | None
    """States/statuses that may be purged (None: any)."""
    state: Column[str] | None = None


def targets(dead_letters: bool = False) -> list[Target]:
    """What retention deletes; with ``dead_letters`` the dead outbox rows too."""
    done = (
        FlowState.ABANDONED,
        FlowState.CONVERTED,
        FlowState.CLEARED,
        FlowState.COMPLETED,
        FlowState.SUPPRESSED,
    )
    finished = tuple(s.value for s in done)
    statuses = [OutboxStatus.SENT.value, OutboxStatus.SUPERSEDED.value]
    if dead_letters:
        statuses.append(OutboxStatus.DEAD.value)
    return [
        Target(outbox, outbox.c.id, outbox.c.created_at, tuple(statuses), outbox.c.status),
        Target(carts, carts.c.cart_id, carts.c.last_activity_at, finished, carts.c.state),
        Target(
            browses, browses.c.browse_key, browses.c.last_activity_at, finished, browses.c.state
        ),
        Target(
            registrations,
            registrations.c.email,
            registrations.c.last_activity_at,
            finished,
            registrations.c.state,
        ),
        Target(orders, orders.c.order_id, orders.c.updated_at, None),
        Target(caps, caps.c.contact, caps.c.last_at, None),
    ]


def purge(
    engine: Engine,
    settings: RetentionSettings,
    now: datetime,
    *,
    older_than: timedelta | None = None,
    dead_letters: bool = False,
    keep_caps_for: timedelta = timedelta(0),
) -> dict[str, int]:
    """Delete what is older than ``older_than`` (default ``retention.days``); counts by table.

    A frequency cap is kept at least ``keep_caps_for`` (the longest ``contact_interval``), or
    purging would let a contact be reminded again too early.
    """
    age = older_than if older_than is not None else timedelta(days=settings.days)
    counts: dict[str, int] = {}
    for target in targets(dead_letters):
        kept = max(age, keep_caps_for) if target.table is caps else age
        conditions: list[ColumnElement[bool]] = [target.age < now - kept]
        if target.finished is not None and target.state is not None:
            conditions.append(target.state.in_(target.finished))
        total = 0
        for _ in range(MAX_BATCHES):
            with engine.begin() as conn:
                deleted = _delete_batch(conn, target, conditions, settings.batch)
            total += deleted
            if deleted < settings.batch:
                break
        counts[target.table.name] = total
    return counts


def _delete_batch(
    conn: Connection, target: Target, conditions: list[ColumnElement[bool]], size: int
) -> int:
    if target.table is caps:  # two-column key: the batch is a set of (flow, contact) pairs
        pairs = select(caps.c.flow, caps.c.contact).where(*conditions).limit(size)
        return conn.execute(
            delete(caps).where(tuple_(caps.c.flow, caps.c.contact).in_(pairs))
        ).rowcount
    batch = select(target.key).where(*conditions).limit(size).scalar_subquery()
    return conn.execute(delete(target.table).where(target.key.in_(batch))).rowcount

"""The outbox: every event is a row here before anything is sent.

Rows are enqueued once per ``dedupe_key``, claimed with a lease (token + expiry), sent outside
any transaction by the dispatcher, and settled only by the holder of the lease's token.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, select, update

from ..config import DeliverySettings
from .engines import locked_batch, upsert
from .enums import OutboxStatus
from .tables import outbox


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """An event ready to queue: its finished body (exact bytes to send, as text) and its key."""

    dedupe_key: str
    event_type_key: str
    key_value: str
    api_path: str
    body: str
    subject_type: str | None = None
    subject_id: str | None = None
    subject_version: int | None = None


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A row this worker holds a lease on; settle it with :func:`settle`."""

    id: int
    token: str
    event_type_key: str
    key_value: str
    api_path: str
    body: str
    attempts: int
    created_at: datetime
    subject_type: str | None
    subject_id: str | None
    subject_version: int | None


def enqueue(conn: Connection, events: Sequence[NewEvent], now: datetime) -> int:
    """Insert events as ``pending``, skipping ``dedupe_key``s already queued; returns how many."""
    if not events:
        return 0
    rows = [
        {
            **dataclasses.asdict(e),
            "status": OutboxStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for e in events
    ]
    stmt = (
        upsert(conn, outbox)
        .on_conflict_do_nothing(index_elements=[outbox.c.dedupe_key])
        .returning(outbox.c.id)
    )
    return len(conn.execute(stmt, rows).all())


_CLAIMED_COLUMNS = (
    outbox.c.id,
    outbox.c.lease_token,
    outbox.c.event_type_key,
    outbox.c.key_value,
    outbox.c.api_path,
    outbox.c.body,
    outbox.c.attempts,
    outbox.c.created_at,
    outbox.c.subject_type,
    outbox.c.subject_id,
    outbox.c.subject_version,
)


def claim(conn: Connection, now: datetime, lease: timedelta, limit: int) -> list[Claimed]:
    """Lease up to ``limit`` due rows: expired leases of crashed workers first, then pending.

    One ``WITH due AS (SELECT … FOR UPDATE SKIP LOCKED) UPDATE … RETURNING`` per kind: on
    PostgreSQL concurrent claimers skip each other's rows; on SQLite the write lock serialises
    them and the repeated condition keeps the claim conditional.
    """
    expired = and_(
        outbox.c.status == OutboxStatus.IN_FLIGHT.value, outbox.c.lease_expires_at <= now
    )
    pending = and_(outbox.c.status == OutboxStatus.PENDING.value, outbox.c.next_attempt_at <= now)
    claimed = _claim_where(conn, expired, outbox.c.lease_expires_at, now, lease, limit)
    if len(claimed) < limit:
        claimed += _claim_where(
            conn, pending, outbox.c.next_attempt_at, now, lease, limit - len(claimed)
        )
    return claimed


def _claim_where(
    conn: Connection,
    condition: ColumnElement[bool],
    order: Any,
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[Claimed]:
    token = str(uuid.uuid4())
    candidates = locked_batch(select(outbox.c.id).where(condition).order_by(order).limit(limit))
    stmt = (
        update(outbox)
        .where(outbox.c.id == candidates.c.id, condition)
        .values(
            status=OutboxStatus.IN_FLIGHT.value, lease_token=token, lease_expires_at=now + lease
        )
        .returning(*_CLAIMED_COLUMNS)
    )
    return [
        Claimed(
            id=r.id,
            token=r.lease_token,
            event_type_key=r.event_type_key,
            key_value=r.key_value,
            api_path=r.api_path,
            body=r.body,
            attempts=r.attempts,
            created_at=r.created_at,
            subject_type=r.subject_type,
            subject_id=r.subject_id,
            subject_version=r.subject_version,
        )
        for r in conn.execute(stmt)
    ]


def settle(conn: Connection, claimed: Claimed, status: OutboxStatus, **values: Any) -> bool:
    """End this worker's lease with a new status; False if the lease was taken over meanwhile."""
    stmt = (
        update(outbox)
        .where(outbox.c.id == claimed.id, outbox.c.lease_token == claimed.token)
        .values(status=status.value, lease_token=None, lease_expires_at=None, **values)
    )
    return conn.execute(stmt).rowcount == 1


def release(conn: Connection, claimed: Claimed, now: datetime) -> bool:
    """Give the row back unsent (shutdown, paused delivery): no attempt is spent."""
    return settle(conn, claimed, OutboxStatus.PENDING, next_attempt_at=now)


def backoff(
    settings: DeliverySettings,
    attempts: int,
    retry_after: timedelta | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before the next try after ``attempts`` failed ones: exponential, capped, jittered.

    Half the delay is fixed and half random, so workers that failed together spread out; a
    ``Retry-After`` from the server is a floor, never shortened.
    """
    base = settings.backoff_base.total_seconds()
    cap = settings.backoff_max.total_seconds()
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    delay = delay / 2 + (rng or random).uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, retry_after.total_seconds())
    return timedelta(seconds=delay)


def gives_up(
    settings: DeliverySettings, attempts: int, created_at: datetime, now: datetime
) -> bool:
    """Whether a row that just failed transiently should go to the dead letters instead."""
    return attempts >= settings.max_attempts or now - created_at >= settings.give_up_after


def replay(
    conn: Connection,
    now: datetime,
    ids: Iterable[int] = (),
    event_type_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Requeue dead rows (all, or by ids, type and creation time) with fresh attempts."""
    conditions: list[ColumnElement[bool]] = [outbox.c.status == OutboxStatus.DEAD.value]
    id_list = list(ids)
    if id_list:
        conditions.append(outbox.c.id.in_(id_list))
    if event_type_key:
        conditions.append(outbox.c.event_type_key == event_type_key)
    if since:
        conditions.append(outbox.c.created_at >= since)
    if until:
        conditions.append(outbox.c.created_at < until)
    stmt = (
        update(outbox)
        .where(*conditions)
        .values(status=OutboxStatus.PENDING.value, attempts=0, next_attempt_at=now, created_at=now)
    )
    return conn.execute(stmt).rowcount


@dataclasses.dataclass(frozen=True)
class Summary:
    """What ``shop-events status`` shows."""

    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    oldest_pending: datetime | None
    last_error: str | None
    last_error_at: datetime | None


def summarize(conn: Connection) -> Summary:
    """Counts by status and by event type, the oldest pending row and the newest error."""
    by_status = {s.value: 0 for s in OutboxStatus}
    by_type: dict[str, dict[str, int]] = {}
    rows = conn.execute(
        select(outbox.c.event_type_key, outbox.c.status, func.count()).group_by(
            outbox.c.event_type_key, outbox.c.status
        )
    )
    for event_type, status, count in rows:
        by_status[status] = by_status.get(status, 0) + count
        by_type.setdefault(event_type, {})[status] = count
    oldest = conn.execute(
        select(func.min(outbox.c.created_at)).where(
            outbox.c.status.in_([OutboxStatus.PENDING.value, OutboxStatus.IN_FLIGHT.value])
        )
    ).scalar()
    error = conn.execute(
        select(outbox.c.last_error, outbox.c.next_attempt_at)
        .where(outbox.c.last_error.is_not(None), outbox.c.status != OutboxStatus.SENT.value)
        .order_by(outbox.c.id.desc())
        .limit(1)
    ).first()
    return Summary(
        by_status=by_status,
        by_type=by_type,
        oldest_pending=oldest,
        last_error=error.last_error if error else None,
        last_error_at=error.next_attempt_at if error else None,
    )

"""The outbox: every event is a row here before anything is sent.

Rows are enqueued once per ``dedupe_key``, claimed with a lease (token + expiry), sent outside
any transaction by the dispatcher, and settled only by the holder of the lease's token.

Leases are set and compared on the database's clock (:func:`database_now`), never on a host's:
a host whose clock runs ahead must not see the leases of others as expired. When a row is due
is the plugin's clock, as every event time is.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
    tuple_,
    update,
)

from .. import metrics
from . import browses
from .engines import delete_some, insert_new, is_mysql, update_returning
from .enums import MARKETING_SUBJECTS, OutboxStatus
from .person import Person, mentions
from .tables import outbox

TABLE = outbox.name


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
    dedupe_key: str = ""


def enqueue(
    conn: Connection, events: Sequence[NewEvent], now: datetime, *, due: datetime | None = None
) -> int:
    """Insert events as ``pending``, skipping ``dedupe_key``s already queued; returns how many.

    They are due at once, or from ``due``.
    """
    return len(enqueue_new(conn, events, now, due=due))


def enqueue_new(
    conn: Connection, events: Sequence[NewEvent], now: datetime, *, due: datetime | None = None
) -> list[str]:
    """:func:`enqueue`, returning the ``dedupe_key`` of each row it inserted."""
    if not events:
        return []
    rows = [
        {
            **dataclasses.asdict(e),
            # plain text, whatever str subclass (an enum member) the caller passed
            "subject_type": None if e.subject_type is None else str(e.subject_type),
            "status": OutboxStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now if due is None else due,
            "created_at": now,
        }
        for e in events
    ]
    inserted = insert_new(conn, outbox, rows, outbox.c.dedupe_key)
    metrics.enqueued(row["event_type_key"] for row in inserted)
    return [row["dedupe_key"] for row in inserted]


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
    outbox.c.dedupe_key,
)


def database_now(conn: Connection) -> datetime:
    """The database's current time, aware UTC: the one clock leases are compared on.

    Read as a value, then bound like any other time, so that it is stored and compared exactly
    as the column's other values are (naive UTC; on SQLite, text in one format).
    """
    if conn.dialect.name == "postgresql":
        value = conn.execute(select(func.clock_timestamp())).scalar_one()
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        text = conn.execute(select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))).scalar_one()
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    if is_mysql(conn):  # UTC whatever the session's time zone; a statement of its own: now
        value = conn.execute(select(func.utc_timestamp(6))).scalar_one()
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)
    value = conn.execute(select(func.current_timestamp())).scalar_one()
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def claim(conn: Connection, now: datetime, lease: timedelta, limit: int) -> list[Claimed]:
    """Lease up to ``limit`` rows due at ``now``: expired leases of crashed workers first, then
    pending. Each lease runs for ``lease`` from the database's current time.

    One ``WITH due AS (SELECT … FOR UPDATE SKIP LOCKED) UPDATE … RETURNING`` per kind: on
    PostgreSQL concurrent claimers skip each other's rows; on SQLite the write lock serialises
    them and the repeated condition keeps the claim conditional.
    """
    held_until = database_now(conn)
    expired = and_(
        outbox.c.status == OutboxStatus.IN_FLIGHT.value, outbox.c.lease_expires_at <= held_until
    )
    pending = and_(
        outbox.c.status == OutboxStatus.PENDING.value,
        outbox.c.next_attempt_at <= now,
        _first_of_its_subject(),
    )
    expiry = held_until + lease
    claimed = _claim_where(conn, expired, outbox.c.lease_expires_at, expiry, limit)
    if len(claimed) < limit:
        claimed += _claim_where(
            conn, pending, outbox.c.next_attempt_at, expiry, limit - len(claimed)
        )
    return claimed


def _first_of_its_subject() -> ColumnElement[bool]:
    """The row has no subject, or no earlier row of its subject for the same endpoint waits to be
    sent: the events of one order or contact go out in the order they were queued, one at a
    time, and one waiting for its retry holds the later ones back (other subjects are not held;
    an order's Generate events and its Orders API rows are two sequences)."""
    earlier = outbox.alias("earlier")
    return or_(
        outbox.c.subject_id.is_(None),
        ~exists().where(
            earlier.c.subject_type == outbox.c.subject_type,
            earlier.c.subject_id == outbox.c.subject_id,
            earlier.c.api_path == outbox.c.api_path,
            earlier.c.id < outbox.c.id,
            earlier.c.status.in_([OutboxStatus.PENDING.value, OutboxStatus.IN_FLIGHT.value]),
        ),
    )


def renew(conn: Connection, claimed: Claimed, lease: timedelta) -> datetime | None:
    """Extend this worker's lease to ``lease`` from the database's current time, right before
    a send; the new expiry, or None if another worker took the row over meanwhile."""
    expiry = database_now(conn) + lease
    stmt = (
        update(outbox)
        .where(
            outbox.c.id == claimed.id,
            outbox.c.lease_token == claimed.token,
            outbox.c.status == OutboxStatus.IN_FLIGHT.value,
        )
        .values(lease_expires_at=expiry)
    )
    return expiry if conn.execute(stmt).rowcount == 1 else None


def _claim_where(
    conn: Connection,
    condition: ColumnElement[bool],
    order: Any,
    expiry: datetime,
    limit: int,
) -> list[Claimed]:
    token = str(uuid.uuid4())
    candidates = select(outbox.c.id).where(condition).order_by(order, outbox.c.id).limit(limit)
    lease = {
        "status": OutboxStatus.IN_FLIGHT.value,
        "lease_token": token,
        "lease_expires_at": expiry,
    }
    claimed = update_returning(conn, outbox, condition, lease, _CLAIMED_COLUMNS, batch=candidates)
    # RETURNING follows no order on PostgreSQL: sent oldest first, as claimed
    rows = sorted(claimed, key=lambda r: r.id)
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
            dedupe_key=r.dedupe_key,
        )
        for r in rows
    ]


def settle(conn: Connection, claimed: Claimed, status: OutboxStatus, **values: Any) -> bool:
    """End this worker's lease with a new status; False if the lease was taken over meanwhile."""
    stmt = (
        update(outbox)
        .where(outbox.c.id == claimed.id, outbox.c.lease_token == claimed.token)
        .values(status=status.value, lease_token=None, lease_expires_at=None, **values)
    )
    return conn.execute(stmt).rowcount == 1


def settle_sent(
    conn: Connection, rows: Sequence[Claimed], *, sent_at: datetime, response_status: int | None
) -> set[int]:
    """End this worker's lease on ``rows`` as delivered, each with one more attempt, in one
    statement (:func:`settle` row by row costs a round trip each); the ids settled: a row whose
    lease was taken over meanwhile is not."""
    if not rows:
        return set()
    held = tuple_(outbox.c.id, outbox.c.lease_token).in_([(row.id, row.token) for row in rows])
    done = update_returning(
        conn,
        outbox,
        held,
        {
            "attempts": outbox.c.attempts + 1,
            "status": OutboxStatus.SENT.value,
            "lease_token": None,
            "lease_expires_at": None,
            "sent_at": sent_at,
            "response_status": response_status,
            "last_error": None,
        },
        [outbox.c.id],
    )
    return {found.id for found in done}


def forgive(conn: Connection, ids: Iterable[int]) -> int:
    """Give back the attempt the rows ``ids`` spent when the API turned out to be down, and
    make them due from their creation time; rows no longer pending are left alone."""
    chosen = list(ids)
    if not chosen:
        return 0
    stmt = (
        update(outbox)
        .where(
            outbox.c.id.in_(chosen),
            outbox.c.status == OutboxStatus.PENDING.value,
            outbox.c.attempts > 0,
        )
        .values(attempts=outbox.c.attempts - 1, next_attempt_at=outbox.c.created_at)
    )
    return conn.execute(stmt).rowcount


def release(conn: Connection, claimed: Claimed, now: datetime) -> bool:
    """Give the row back unsent (shutdown, paused delivery): no attempt is spent."""
    return settle(conn, claimed, OutboxStatus.PENDING, next_attempt_at=now)


def supersede_marketing(conn: Connection, key_value: str) -> list[tuple[str, datetime]]:
    """Supersede the contact's queued marketing events (they opted out); returns each one's
    ``(event_type_key, created_at)``, so the caller can give back what they had taken.
    """
    rows = update_returning(
        conn,
        outbox,
        and_(
            outbox.c.key_value == key_value,
            outbox.c.status == OutboxStatus.PENDING.value,
            outbox.c.subject_type.in_([s.value for s in MARKETING_SUBJECTS]),
        ),
        {"status": OutboxStatus.SUPERSEDED.value, "last_error": "the contact opted out"},
        (outbox.c.event_type_key, outbox.c.created_at),
    )
    return [(row.event_type_key, row.created_at) for row in rows]


_UNSENT = (OutboxStatus.PENDING.value, OutboxStatus.IN_FLIGHT.value)


def _theirs(person: Person) -> ColumnElement[bool]:
    """Rows about the person: keyed by the address, about their carts, browses or orders, or
    mentioning the address anywhere (a body, a key, the platform's answer)."""
    subjects = (person.email, *person.cart_ids, *browses.keys_of(person), *person.order_ids)
    text = (outbox.c.key_value, outbox.c.body, outbox.c.subject_id, outbox.c.dedupe_key)
    return or_(
        outbox.c.key_value == person.email,
        outbox.c.subject_id.in_(subjects),
        mentions([*text, outbox.c.last_error], person),
    )


def held(conn: Connection, person: Person) -> list[Any]:
    """Every row about the person, whatever its status, oldest first."""
    return list(conn.execute(select(outbox).where(_theirs(person)).order_by(outbox.c.id)))


def forget(conn: Connection, person: Person, *, keep_unsent: Sequence[str] = ()) -> int:
    """Delete every row about the person, whatever its status; how many. Rows of the types
    ``keep_unsent`` still pending or in flight stay (a contact erasure on its way).

    A row in flight is deleted too: its sender's settlement, filtered on its lease token, then
    finds nothing and records nothing; its request may still reach the platform.
    """
    kept = and_(outbox.c.event_type_key.in_(keep_unsent), outbox.c.status.in_(_UNSENT))
    gone = delete(outbox).where(_theirs(person), not_(kept))
    return int(conn.execute(gone).rowcount)


def unsent(conn: Connection, event_type_key: str, key_value: str) -> bool:
    """Whether a row of this type and key is still pending or in flight."""
    query = select(outbox.c.id).where(
        outbox.c.event_type_key == event_type_key,
        outbox.c.key_value == key_value,
        outbox.c.status.in_(_UNSENT),
    )
    return conn.execute(query.limit(1)).first() is not None


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


def delete_before(
    conn: Connection, cutoff: datetime, statuses: Sequence[OutboxStatus], limit: int
) -> int:
    """Delete up to ``limit`` rows in ``statuses`` created before ``cutoff``; how many."""
    old = and_(outbox.c.created_at < cutoff, outbox.c.status.in_([s.value for s in statuses]))
    return delete_some(conn, outbox, old, limit)


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


# -- reading for the operator pages -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of outbox rows, newest first, and whether there are more on either side."""

    rows: list[Any]
    has_newer: bool
    has_older: bool


def history(
    conn: Connection,
    *,
    size: int,
    event_type_key: str | None = None,
    status: str | None = None,
    key_contains: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    after: int | None = None,
) -> Page:
    """A page of ``size`` rows, newest first, paged by id (keyset): older than ``before``, or
    newer than ``after``, else the newest.

    Filters: the event type, the status, ``key_contains`` within the key value (ignoring case,
    taken literally) and the creation time (``since`` inclusive, ``until`` exclusive).
    """
    conditions: list[ColumnElement[bool]] = []
    if event_type_key:
        conditions.append(outbox.c.event_type_key == event_type_key)
    if status:
        conditions.append(outbox.c.status == status)
    if key_contains:
        conditions.append(
            func.lower(outbox.c.key_value).contains(key_contains.lower(), autoescape=True)
        )
    if since is not None:
        conditions.append(outbox.c.created_at >= since)
    if until is not None:
        conditions.append(outbox.c.created_at < until)
    query = select(outbox).where(*conditions)
    if after is not None:
        rows = list(
            conn.execute(
                query.where(outbox.c.id > after).order_by(outbox.c.id.asc()).limit(size + 1)
            )
        )
        has_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        has_older = bool(rows) and _any(conn, *conditions, outbox.c.id < rows[-1].id)
        return Page(rows, has_newer, has_older)
    if before is not None:
        query = query.where(outbox.c.id < before)
    rows = list(conn.execute(query.order_by(outbox.c.id.desc()).limit(size + 1)))
    page = rows[:size]
    return Page(page, has_newer=bool(page) and before is not None, has_older=len(rows) > size)


def _any(conn: Connection, *conditions: ColumnElement[bool]) -> bool:
    return conn.execute(select(outbox.c.id).where(*conditions).limit(1)).first() is not None


def get(conn: Connection, event_id: int) -> Any | None:
    """The outbox row with this id (every column), or None."""
    return conn.execute(select(outbox).where(outbox.c.id == event_id)).first()


def find(conn: Connection, dedupe_key: str) -> Any | None:
    """The row queued under ``dedupe_key``, or None."""
    return conn.execute(select(outbox).where(outbox.c.dedupe_key == dedupe_key)).first()


def count_pending(conn: Connection, subject_type: str, subject_id: str) -> int:
    """How many events about this subject wait to be sent."""
    query = (
        select(func.count())
        .select_from(outbox)
        .where(
            outbox.c.subject_type == subject_type,
            outbox.c.subject_id == subject_id,
            outbox.c.status == OutboxStatus.PENDING.value,
        )
    )
    return int(conn.execute(query).scalar_one())


def every_row(conn: Connection) -> list[Any]:
    """Every row, oldest first: for audits of small databases (the demo's accounting)."""
    return list(conn.execute(select(outbox).order_by(outbox.c.id)).all())


def event_types(conn: Connection) -> list[str]:
    """Every event type in the outbox, sorted."""
    query = select(outbox.c.event_type_key).distinct().order_by(outbox.c.event_type_key)
    return list(conn.execute(query).scalars())


def count(conn: Connection, status: OutboxStatus) -> int:
    """How many rows have this status (``count(conn, OutboxStatus.DEAD)``: the dead letters)."""
    query = select(func.count()).select_from(outbox).where(outbox.c.status == status.value)
    return int(conn.execute(query).scalar_one())


def count_keyed(conn: Connection, prefix: str) -> dict[str, int]:
    """How many rows whose ``dedupe_key`` starts with ``prefix`` have each status (a
    backfill's rows: ``"backfill:"``)."""
    query = (
        select(outbox.c.status, func.count())
        .where(outbox.c.dedupe_key.startswith(prefix, autoescape=True))
        .group_by(outbox.c.status)
    )
    return {status: int(n) for status, n in conn.execute(query)}

"""The reminders table: every reminder queued, when it was delivered, when its link was opened.

Keyed by the outbox row's ``dedupe_key`` (one per flow, subject, version and step). The scanner
writes a row with each reminder it queues, the dispatcher stamps ``delivered_at`` when the
platform accepted it, a recovery link stamps the first click and counts them; attribution and
the recovery report read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, func, or_, select, update

from . import browses
from .engines import delete_some, insert_new
from .person import Person
from .tables import reminders

TABLE = reminders.name


@dataclasses.dataclass(frozen=True)
class NewReminder:
    """A reminder being queued, beside its outbox row."""

    dedupe_key: str
    flow: str
    """The flow's subject: ``cart``, ``browse`` or ``registration``."""
    event_type_key: str
    subject_id: str
    subject_version: int
    step: int
    email: str
    items: str | None = None
    """The cart as the reminder shows it (JSON), for restoring it; None for other flows."""
    coupon: str | None = None


def record(conn: Connection, queued: Sequence[NewReminder], now: datetime) -> int:
    """Insert the reminders not recorded yet; how many were."""
    rows = [{**dataclasses.asdict(r), "created_at": now, "clicks": 0} for r in queued]
    return len(insert_new(conn, reminders, rows, reminders.c.dedupe_key))


def delivered(conn: Connection, dedupe_key: str, at: datetime) -> None:
    """The platform accepted the reminder queued under ``dedupe_key`` at ``at`` (if one was)."""
    conn.execute(
        update(reminders)
        .where(reminders.c.dedupe_key == dedupe_key, reminders.c.delivered_at.is_(None))
        .values(delivered_at=at)
    )


def get(conn: Connection, dedupe_key: str) -> Any | None:
    """The reminder queued under ``dedupe_key``, or None."""
    return conn.execute(select(reminders).where(reminders.c.dedupe_key == dedupe_key)).first()


def clicked(conn: Connection, dedupe_key: str, at: datetime) -> bool:
    """Count one opening of the reminder's link (the first one's time is kept); False if there
    is no such reminder."""
    done = conn.execute(
        update(reminders)
        .where(reminders.c.dedupe_key == dedupe_key)
        .values(
            clicks=reminders.c.clicks + 1,
            first_click_at=func.coalesce(reminders.c.first_click_at, at),
        )
    )
    return bool(done.rowcount)


def last_delivered(
    conn: Connection, email: str, cart_id: str | None, since: datetime, until: datetime
) -> Any | None:
    """The last reminder to ``email`` (or about the cart ``cart_id``) delivered in
    ``[since, until]``, or None."""
    owner = reminders.c.email == email
    if cart_id is not None:
        owner = or_(owner, (reminders.c.flow == "cart") & (reminders.c.subject_id == cart_id))
    query = (
        select(reminders)
        .where(owner, reminders.c.delivered_at >= since, reminders.c.delivered_at <= until)
        .order_by(reminders.c.delivered_at.desc(), reminders.c.step.desc())
        .limit(1)
    )
    return conn.execute(query).first()


def sequence_clicked(conn: Connection, reminder: Any, before: datetime) -> bool:
    """Whether a link of ``reminder``'s sequence (its flow, subject and version: every step)
    was opened before ``before``."""
    query = select(func.count()).where(
        reminders.c.flow == reminder.flow,
        reminders.c.subject_id == reminder.subject_id,
        reminders.c.subject_version == reminder.subject_version,
        reminders.c.first_click_at <= before,
    )
    return bool(conn.execute(query).scalar_one())


@dataclasses.dataclass(frozen=True)
class Tally:
    """How many reminders of one flow and step did something on one day."""

    flow: str
    step: int
    day: date
    count: int


def _by_day(conn: Connection, column: Any, since: datetime, until: datetime) -> list[Tally]:
    day = func.date(column)
    query = (
        select(reminders.c.flow, reminders.c.step, day, func.count())
        .where(column >= since, column < until)
        .group_by(reminders.c.flow, reminders.c.step, day)
    )
    return [
        Tally(str(flow), int(step), _as_date(value), int(count))
        for flow, step, value, count in conn.execute(query)
    ]


def queued_by_day(conn: Connection, since: datetime, until: datetime) -> list[Tally]:
    """Reminders queued in ``[since, until)`` per flow, step and day (UTC)."""
    return _by_day(conn, reminders.c.created_at, since, until)


def delivered_by_day(conn: Connection, since: datetime, until: datetime) -> list[Tally]:
    """Reminders delivered in ``[since, until)`` per flow, step and day (UTC)."""
    return _by_day(conn, reminders.c.delivered_at, since, until)


def clicked_by_day(conn: Connection, since: datetime, until: datetime) -> list[Tally]:
    """Reminders whose link was first opened in ``[since, until)``, per flow, step and day:
    a link opened several times is one."""
    return _by_day(conn, reminders.c.first_click_at, since, until)


def _as_date(value: Any) -> date:
    """A day as the engine returns ``DATE(…)``: a date (PostgreSQL, MySQL) or text (SQLite)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def delete_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` reminders queued before ``cutoff``; how many."""
    return delete_some(conn, reminders, reminders.c.created_at < cutoff, limit)


def _theirs(person: Person) -> ColumnElement[bool]:
    subjects = (*person.cart_ids, *browses.keys_of(person))
    return or_(reminders.c.email == person.email, reminders.c.subject_id.in_(subjects))


def held(conn: Connection, person: Person) -> list[Any]:
    """The reminders queued for the person, with their delivery and clicks, oldest first."""
    query = (
        select(reminders)
        .where(_theirs(person))
        .order_by(reminders.c.created_at, reminders.c.dedupe_key)
    )
    return list(conn.execute(query))


def forget(conn: Connection, person: Person) -> int:
    """Delete the reminders queued for the person (and their clicks); how many."""
    return int(conn.execute(delete(reminders).where(_theirs(person))).rowcount)

"""Erasure on request: every row the plugin holds about an address, gone in one transaction.

What goes: the person's carts (also those of visitors identified as them), browses,
registration, orders, identity links, consent entries, frequency caps, reminders with their
clicks, recovered orders, kept captures mentioning the address, and outbox rows of every status
that are about the person or mention the address anywhere (bodies included, in any case, JSON-
or URL-encoded). Failed-capture messages and shared states that quote the address keep their
counts with the address blanked out. Activity tables are deleted first and the outbox last, so
that on PostgreSQL and MySQL an event queued by a scan committing meanwhile is deleted too.

On SQLite every connection of the plugin zeroes what it deletes or rewrites (``secure_delete``),
and after the commit the WAL is checkpointed and truncated: the address's bytes are then in
neither the database file nor its ``-wal`` (the ``-shm`` holds no content). PostgreSQL and
MySQL keep deleted rows' bytes until they vacuum or purge them (README: Privacy).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Connection, Engine

from ..config import Settings
from ..payload.erasure import ERASURE_TYPE, erasure_body
from ..storage import (
    browses,
    caps,
    capture_errors,
    carts,
    consent,
    kept_captures,
    orders,
    outbox,
    pause,
    recoveries,
    registrations,
    reminders,
    visitors,
)
from ..storage.engines import checkpoint
from ..storage.person import Person
from .person import find, normalized

log = logging.getLogger(__name__)


class Forgotten(dict[str, int]):
    """Rows deleted per table (for error messages and shared states: rows redacted), and what
    else the erasure did."""

    def __init__(
        self, counts: Mapping[str, int], *, complete: bool, platform_erasure: bool
    ) -> None:
        super().__init__(counts)
        self.complete = complete
        """False when bytes of the address may still be in SQLite's ``-wal`` file: readers held
        the checkpoint back at every attempt. Forgetting the address again finishes it."""
        self.platform_erasure = platform_erasure
        """Whether the platform's contact erasure is queued (now or by an earlier request)."""


def erase(
    engine: Engine,
    settings: Settings,
    email: object,
    now: datetime,
    *,
    platform: bool | None = None,
) -> Forgotten:
    """Delete everything held about ``email`` (case and surrounding spaces do not matter) in
    one transaction; then, on SQLite, checkpoint the WAL. With ``platform`` (default
    ``privacy.erase_on_platform``) the platform's contact erasure is queued in the same
    transaction; with ``privacy.suppress_after_forget`` the address is suppressed.
    ``ValidationError`` when ``email`` is not an address."""
    address = normalized(email)
    on_platform = settings.privacy.erase_on_platform if platform is None else platform
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":  # a host's engine too, for this transaction's deletes
            conn.exec_driver_sql("PRAGMA secure_delete = ON")
        counts = forget(conn, find(conn, address))
        if settings.privacy.suppress_after_forget:
            consent.suppress(conn, address, now)
        if on_platform:
            queue_platform_erasure(conn, settings, address, now)
    complete = checkpoint(engine)
    if not complete:
        log.warning(
            "forget: the rows are deleted, but the WAL could not be checkpointed (readers held "
            "it): deleted pages stay in %s-wal until a checkpoint; forget the address again",
            engine.url.database,
        )
    return Forgotten(counts, complete=complete, platform_erasure=on_platform)


def forget(conn: Connection, person: Person) -> dict[str, int]:
    """Delete (or redact) every row about ``person`` on ``conn``; counts per table. A contact
    erasure still on its way to the platform stays."""
    counts = {
        carts.TABLE: carts.forget(conn, person),
        browses.TABLE: browses.forget(conn, person),
        registrations.TABLE: registrations.forget(conn, person),
        orders.TABLE: orders.forget(conn, person),
        visitors.TABLE: visitors.forget(conn, person),
        reminders.TABLE: reminders.forget(conn, person),
        recoveries.TABLE: recoveries.forget(conn, person),
        caps.TABLE: caps.forget(conn, person),
        **consent.forget(conn, person.email),
        kept_captures.TABLE: kept_captures.forget(conn, person),
        capture_errors.TABLE: capture_errors.redact(conn, person),
        pause.TABLE: pause.redact(conn, person),
    }
    counts[outbox.TABLE] = outbox.forget(conn, person, keep_unsent=[ERASURE_TYPE])
    return counts


def queue_platform_erasure(conn: Connection, settings: Settings, email: str, now: datetime) -> bool:
    """Queue the platform's erasure of the contact ``email`` unless one is on its way; whether
    it was queued.

    It is due ``delivery.lease`` from now: a send of the person's events that was in flight
    when they were deleted has ended by then (no send starts without lease time to finish it),
    so the erasure reaches the platform after it, not before.
    """
    if outbox.unsent(conn, ERASURE_TYPE, email):
        return False
    privacy = settings.privacy
    event = outbox.NewEvent(
        dedupe_key=f"{ERASURE_TYPE}:{uuid.uuid4()}",
        event_type_key=ERASURE_TYPE,
        key_value=email,
        api_path=privacy.erasure_path,
        body=erasure_body(privacy.erasure_key, email),
    )
    return outbox.enqueue(conn, [event], now, due=now + settings.delivery.lease) == 1

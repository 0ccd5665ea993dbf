"""Retention: finished activity and sent events older than ``retention.days`` are deleted in
batches by a scheduled job (on SQLite, batches sized to hold the write lock about
``database.write_lock_budget``). Dead letters stay until replayed or purged on purpose; active
carts, browses and registrations and consent records are never purged. Some tables are kept
longer by their own settings (the frequency caps, the recovery report's reminders and orders).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from .config import RetentionSettings
from .storage import activity, caps, orders, outbox, recoveries, reminders
from .storage.activity import SUBJECTS
from .storage.engines import WriteBatches
from .storage.enums import OutboxStatus, Subject

MAX_BATCHES = 10_000
DeleteBatch = Callable[[Connection, datetime, int], int]
"""Deletes up to ``limit`` rows older than the cutoff; returns how many."""


def targets(dead_letters: bool = False) -> dict[str, DeleteBatch]:
    """What retention deletes, by table; with ``dead_letters`` the dead outbox rows too."""
    statuses = [OutboxStatus.SENT, OutboxStatus.SUPERSEDED]
    if dead_letters:
        statuses.append(OutboxStatus.DEAD)

    def finished_events(conn: Connection, cutoff: datetime, limit: int) -> int:
        return outbox.delete_before(conn, cutoff, statuses, limit)

    def activity_of(subject: Subject) -> DeleteBatch:
        def delete(conn: Connection, cutoff: datetime, limit: int) -> int:
            return activity.delete_finished_before(conn, subject, cutoff, limit)

        return delete

    return {
        outbox.TABLE: finished_events,
        **{activity.table_name(subject): activity_of(subject) for subject in SUBJECTS},
        orders.TABLE: orders.delete_before,
        caps.TABLE: caps.delete_before,
        reminders.TABLE: reminders.delete_before,
        recoveries.TABLE: recoveries.delete_before,
    }


def purge(
    engine: Engine,
    settings: RetentionSettings,
    now: datetime,
    *,
    older_than: timedelta | None = None,
    dead_letters: bool = False,
    keep: Mapping[str, timedelta] | None = None,
) -> dict[str, int]:
    """Delete what is older than ``older_than`` (default ``retention.days``); counts by table.

    ``keep`` holds tables kept at least so long whatever the age: the frequency caps for the
    longest ``contact_interval`` (purging them would let a contact be reminded too early), the
    reminders and recovered orders for ``recovery.keep`` (the report reads them).
    """
    keep = keep or {}
    age = older_than if older_than is not None else timedelta(days=settings.days)
    counts: dict[str, int] = {}
    for table, delete_batch in targets(dead_letters).items():
        kept = max(age, keep.get(table, timedelta(0)))
        total = 0
        batches = WriteBatches(engine, settings.batch)
        for _ in range(MAX_BATCHES):
            limit = batches.size
            with batches.transaction(engine) as (conn, handled):
                deleted = delete_batch(conn, now - kept, limit)
                handled.append(deleted)
            total += deleted
            if deleted < limit:
                break
        counts[table] = total
    return counts

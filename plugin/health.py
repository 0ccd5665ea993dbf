"""The plugin's health, read once for every place that shows it.

``shop-events status`` and the operator health page show the same facts: events by status and
by type, the oldest event still waiting, the delivery pause, the newest error, and the
activity still waiting for its abandonment time. :func:`read_health` reads them in one
connection into a :class:`Health`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from .config import Settings
from .storage import activity, outbox, pause
from .storage.enums import FlowState, Subject
from .storage.pause import Pause


@dataclasses.dataclass(frozen=True)
class WaitingCart:
    """An active cart not yet abandoned, and when it comes due."""

    cart_id: str
    email: str | None
    visitor_id: str | None
    products: int
    last_activity_at: datetime
    due: datetime
    due_in: timedelta
    """Until ``due``; zero or less once it is due (the next scan takes it)."""


@dataclasses.dataclass(frozen=True)
class Health:
    """What ``shop-events status`` and the operator health page show, as of ``now``."""

    now: datetime
    by_status: dict[str, int]
    """Outbox rows by status, every status present (in the order of :class:`OutboxStatus`)."""
    by_type: dict[str, dict[str, int]]
    """Outbox rows by event type, then by status (only the statuses that occur)."""
    oldest_pending: datetime | None
    """Creation time of the oldest row still pending or in flight."""
    last_error: str | None
    """The newest error of a row not sent."""
    last_error_at: datetime | None
    pause: Pause | None
    """The delivery pause in force, or expired but not yet lifted by a probe."""
    active: Mapping[Subject, int]
    """Carts, browses and registrations still active (waiting for their abandonment time)."""
    waiting_carts: tuple[WaitingCart, ...]
    """The carts longest idle first, at most ``web.admin_page_size`` of them."""
    suppressed: Mapping[Subject, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    """Carts, browses and registrations that came due with nothing sent, by reason
    (``no_contact``, ``opted_out``, ``capped``, ``unbuildable``); subjects with none left out."""

    @property
    def oldest_pending_age(self) -> timedelta | None:
        """How long the oldest row still pending or in flight has waited."""
        return None if self.oldest_pending is None else self.now - self.oldest_pending

    @property
    def paused(self) -> bool:
        """True while no worker may send (a pause past its end is probing, not paused)."""
        return self.pause is not None and self.pause.active(self.now)


def read_health(source: Engine | Connection, settings: Settings, now: datetime) -> Health:
    """Read the plugin's health as of ``now`` from an engine (one short connection) or a
    connection the caller holds.
    """
    if isinstance(source, Engine):
        with source.connect() as conn:
            return _read(conn, settings, now)
    return _read(source, settings, now)


def _read(conn: Connection, settings: Settings, now: datetime) -> Health:
    summary = outbox.summarize(conn)
    after = settings.abandoned_cart.after
    waiting = [
        WaitingCart(
            cart_id=row.cart_id,
            email=row.email,
            visitor_id=row.visitor_id,
            products=len(json.loads(row.items)),
            last_activity_at=row.last_activity_at,
            due=row.last_activity_at + after,
            due_in=row.last_activity_at + after - now,
        )
        for row in activity.waiting(conn, Subject.CART, settings.web.admin_page_size)
    ]
    return Health(
        now=now,
        by_status=summary.by_status,
        by_type=summary.by_type,
        oldest_pending=summary.oldest_pending,
        last_error=summary.last_error,
        last_error_at=summary.last_error_at,
        pause=pause.current(conn),
        active={
            subject: activity.count_in_state(conn, subject, FlowState.ACTIVE)
            for subject in activity.SUBJECTS
        },
        waiting_carts=tuple(waiting),
        suppressed={
            subject: counts
            for subject in activity.SUBJECTS
            if (counts := activity.count_suppressed_by_reason(conn, subject))
        },
    )

"""The plugin's health, read once for every place that shows it.

``shop-events status`` and the operator health page show the same facts: events by status and
by type, the oldest event still waiting, the delivery pause, the newest error, the activity
still waiting for its abandonment time, and the captures from the shop's models that failed
(per mapping and field) or wait to be tried again. :func:`read_health` reads them in one
connection into a :class:`Health`.

Whether delivery is healthy is decided here only: :func:`problems` names what is wrong in one
word each (``missing-tables``, ``paused``, ``circuit``, ``stalled``), for ``/shop-events/healthz``,
``shop-events status --check`` and the :class:`StallWatch` job alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from .config import Settings, format_duration
from .storage import activity, capture_errors, kept_captures, outbox, pause
from .storage.capture_errors import CaptureError
from .storage.enums import FlowState, Subject
from .storage.kept_captures import KeptCapture
from .storage.pause import Circuit, Pause

log = logging.getLogger(__name__)

MISSING_TABLES = "missing-tables"
"""The plugin's tables are not there: the database was never migrated (or not to this version)."""
PAUSED = "paused"
"""Delivery is paused (the platform refused the key)."""
CIRCUIT = "circuit"
"""The shared circuit is open: the API gave no answer (or 5xx) to many sends in a row."""
STALLED = "stalled"
"""The oldest event still waiting is older than ``alerts.stall_after``."""


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
    circuit: Circuit | None = None
    """The open circuit (since, next probe, reason), or None while the API answers."""
    capture_errors: tuple[CaptureError, ...] = ()
    """Failed captures per mapping and field, the most recent first (at most
    ``web.admin_page_size``): count, first and last time, the newest message."""
    capture_errors_total: int = 0
    """Failed captures counted, all mappings and fields together."""
    kept: tuple[KeptCapture, ...] = ()
    """Captures kept to be tried again at the next commit that touches them, longest first."""
    kept_total: int = 0

    @property
    def oldest_pending_age(self) -> timedelta | None:
        """How long the oldest row still pending or in flight has waited."""
        return None if self.oldest_pending is None else self.now - self.oldest_pending

    @property
    def paused(self) -> bool:
        """True while no worker may send (a pause past its end is probing, not paused)."""
        return self.pause is not None and self.pause.active(self.now)

    def problems(self, settings: Settings) -> tuple[str, ...]:
        """What is wrong with delivery, one word each, most telling first; empty when healthy."""
        return _problems(self.paused, self.oldest_pending_age, settings, self.circuit is not None)


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
        circuit=pause.circuit(conn),
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
        capture_errors=tuple(capture_errors.newest(conn, settings.web.admin_page_size)),
        capture_errors_total=capture_errors.total(conn),
        kept=tuple(kept_captures.oldest(conn, settings.web.admin_page_size)),
        kept_total=kept_captures.count(conn),
    )


def problems(source: Engine | Connection, settings: Settings, now: datetime) -> tuple[str, ...]:
    """What is wrong with delivery as of ``now``, one word each, most telling first (empty when
    delivery runs): ``missing-tables``, ``paused``, ``circuit``, ``stalled``.

    Reads the pause, the circuit and the outbox summary. Missing tables are an answer, not an
    error; any other database error (the database is down) is raised.
    """
    if isinstance(source, Engine):
        with source.connect() as conn:
            return _read_problems(conn, settings, now)
    return _read_problems(source, settings, now)


def _read_problems(conn: Connection, settings: Settings, now: datetime) -> tuple[str, ...]:
    try:
        current = pause.current(conn)
        circuit = pause.circuit(conn)
        oldest = outbox.summarize(conn).oldest_pending
    except (OperationalError, ProgrammingError):
        conn.rollback()  # PostgreSQL refuses anything more in a failed transaction
        if not _migrated(conn.engine):
            return (MISSING_TABLES,)
        raise
    paused = current is not None and current.active(now)
    age = None if oldest is None else now - oldest
    return _problems(paused, age, settings, circuit is not None)


def _migrated(engine: Engine) -> bool:
    from .storage.migrate import current_revision, head_revision

    return current_revision(engine) == head_revision()


def _problems(
    paused: bool, oldest_age: timedelta | None, settings: Settings, circuit: bool = False
) -> tuple[str, ...]:
    found = []
    if paused:
        found.append(PAUSED)
    if circuit:
        found.append(CIRCUIT)
    if oldest_age is not None and oldest_age > settings.alerts.stall_after:
        found.append(STALLED)
    return tuple(found)


class StallWatch:
    """A scheduler job: logs one ERROR when delivery stalls and one INFO when it moves again.

    The state between runs lives in this object, so each process that runs the jobs says it
    once per stall rather than once per pass.
    """

    def __init__(self, engine: Engine, settings: Settings, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self.stalled = False
        """Whether the last run found delivery stalled."""

    def __call__(self) -> tuple[str, ...]:
        """Read the problems now, log a stall's start or end, and return them."""
        found = problems(self._engine, self._settings, self._clock())
        stalled = STALLED in found
        if stalled and not self.stalled:
            log.error(
                "delivery stalled: the oldest pending event has waited longer than %s",
                format_duration(self._settings.alerts.stall_after),
            )
        elif self.stalled and not stalled:
            log.info("delivery no longer stalled")
        self.stalled = stalled
        return found

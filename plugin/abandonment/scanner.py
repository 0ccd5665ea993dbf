"""Abandonment detection: idle carts, browses and registrations become outbox rows, one per
reminder step as each comes due.

One transaction per batch moves due rows from ``active`` to ``abandoned`` with a conditional
``UPDATE … RETURNING`` and inserts their outbox rows, so two scanners racing can never enqueue
the same abandonment twice, and a row touched meanwhile is not due any more. On SQLite the
batches are sized so that each transaction holds the write lock about
``database.write_lock_budget``. A row whose event cannot be built is suppressed (``unbuildable``,
the error logged) and the scan goes on.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from ..clock import Clock, utcnow
from ..config import Settings
from ..errors import ConfigError, ValidationError
from ..storage import activity, caps, consent, reminders
from ..storage.engines import WriteBatches
from ..storage.enums import FlowState, SkipReason
from ..storage.outbox import NewEvent, enqueue
from ..storage.reminders import NewReminder
from .coupons import Coupon, Coupons
from .flows import Flow, Row, Step, flows

log = logging.getLogger(__name__)

MAX_BATCHES_PER_SCAN = 1000


@dataclasses.dataclass
class ScanResult:
    """What one scan pass did, over all flows."""

    abandoned: int = 0
    """Rows that came due and got their event queued."""
    suppressed: int = 0
    """Rows that came due with nothing to send: no contact, opted out, capped, unbuildable."""
    unbuildable: int = 0
    """Of those, rows whose event could not be built (the error is logged)."""
    converted: int = 0
    """Rows that came due but were cancelled meanwhile (e.g. a browse whose shopper carted)."""
    enqueued: int = 0
    by_flow: dict[str, int] = dataclasses.field(default_factory=dict)
    """Events queued per flow (``cart``, ``browse``, ``registration``)."""
    steps: dict[int, int] = dataclasses.field(default_factory=dict)
    """Events queued per step number (1 for a sequence's first reminder)."""


class Scanner:
    """Finds rows whose next reminder step is due and queues their events."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock = utcnow,
        coupon: Coupon | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._flows = [f for f in flows(settings) if f.settings.enabled]
        recovery = settings.recovery
        if recovery.links and not recovery.secret.reveal():
            raise ConfigError(
                "recovery.secret: required with recovery.links to sign the links (set "
                "SHOP_EVENTS_RECOVERY_SECRET; under Flask it defaults to a key derived from "
                "the app's secret_key)"
            )
        self._coupons = Coupons(settings.recovery, coupon)

    def scan(self) -> ScanResult:
        """One pass over everything due now, flow by flow and step by step, in batches;
        bounded."""
        result = ScanResult()
        now = self._clock()
        for flow in self._flows:
            for number, delay in enumerate(flow.settings.delays, 1):
                batches = WriteBatches(self._engine, flow.settings.scan_batch)
                for _ in range(MAX_BATCHES_PER_SCAN):
                    limit = batches.size
                    with batches.transaction(self._engine) as (conn, handled):
                        found = self._scan_batch(conn, flow, number, delay, now, result, limit)
                        handled.append(found)
                    if found < limit:
                        break
        if result.abandoned or result.suppressed or result.converted:
            log.info(
                "scan: %d abandoned %s, %d suppressed, %d cancelled",
                result.abandoned,
                result.by_flow,
                result.suppressed,
                result.converted,
            )
        return result

    def _scan_batch(
        self,
        conn: Connection,
        flow: Flow,
        number: int,
        delay: timedelta,
        now: datetime,
        result: ScanResult,
        limit: int,
    ) -> int:
        settings = flow.settings
        rows = activity.take_due(conn, flow.subject, now, delay, limit, number)
        events: list[NewEvent] = []
        queued: list[NewReminder] = []
        contacts = [c for c in map(flow.contact, rows) if c]
        mode = self._settings.consent.mode
        refused = consent.refused(conn, contacts, mode) if settings.marketing else set()
        for row in rows:
            reason, event, step = self._outcome(conn, flow, row, number, now, refused)
            if event is not None and step is not None:
                events.append(event)
                queued.append(flow.reminder(row, event, step))
                result.abandoned += 1
                result.steps[number] = result.steps.get(number, 0) + 1
                subject = flow.subject.value
                result.by_flow[subject] = result.by_flow.get(subject, 0) + 1
                continue
            assert reason is not None
            cancelled = reason is SkipReason.CANCELLED
            state = FlowState.CONVERTED if cancelled else FlowState.SUPPRESSED
            key = activity.key_of(flow.subject, row)
            activity.set_outcome(conn, flow.subject, key, state, reason)
            if cancelled:
                result.converted += 1
            else:
                result.suppressed += 1
                result.unbuildable += reason is SkipReason.UNBUILDABLE
        result.enqueued += enqueue(conn, events, now)
        reminders.record(conn, queued, now)
        self._coupons.record_failures(conn)
        return len(rows)

    def _outcome(
        self,
        conn: Connection,
        flow: Flow,
        row: Row,
        number: int,
        now: datetime,
        refused: set[str],
    ) -> tuple[SkipReason | None, NewEvent | None, Step | None]:
        """The due row's event, or why it emits nothing (cancelled: converted; else suppressed).

        The event is built before the frequency cap is taken, so a row that cannot be sent
        does not spend the contact's cap; only a sequence's first step takes it.
        """
        contact = flow.contact(row)
        if not contact:
            return SkipReason.NO_CONTACT, None, None
        if contact in refused:
            return SkipReason.OPTED_OUT, None, None
        if flow.cancelled(conn, row):
            return SkipReason.CANCELLED, None, None
        key = activity.key_of(flow.subject, row)
        coupon = self._coupons.code(flow, key, contact, number, now)
        step = Step(number=number, now=now, coupon=coupon)
        try:
            event = flow.event(row, step)
        except Exception as exc:  # one row's data, not the scan: the others still go out
            log.error(
                "%s %r version %s step %d cannot be sent, suppressed as %s: %s",
                flow.subject.value,
                key,
                row.version,
                number,
                SkipReason.UNBUILDABLE.value,
                exc,
                exc_info=not isinstance(exc, ValidationError),
            )
            return SkipReason.UNBUILDABLE, None, None
        settings = flow.settings
        if number == 1 and not caps.take(
            conn, settings.event_type_key, contact, now, settings.contact_interval
        ):
            return SkipReason.CAPPED, None, None
        return None, event, step

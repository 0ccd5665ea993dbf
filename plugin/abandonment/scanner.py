"""Abandonment detection: idle carts, browses and registrations become outbox rows.

One transaction per batch moves due rows from ``active`` to ``abandoned`` with a conditional
``UPDATE … RETURNING`` and inserts their outbox rows, so two scanners racing can never enqueue
the same abandonment twice, and a row touched meanwhile is not due any more.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from sqlalchemy import Connection, Engine

from ..clock import Clock, utcnow
from ..config import Settings
from ..storage import activity, caps, consent
from ..storage.enums import FlowState, SkipReason
from ..storage.outbox import NewEvent, enqueue
from .flows import Flow, Row, flows

log = logging.getLogger(__name__)

MAX_BATCHES_PER_SCAN = 1000


@dataclasses.dataclass
class ScanResult:
    """What one scan pass did, over all flows."""

    abandoned: int = 0
    """Rows that came due and got their event queued."""
    suppressed: int = 0
    """Rows that came due with nothing to send: no contact, opted out, or capped."""
    converted: int = 0
    """Rows that came due but were cancelled meanwhile (e.g. a browse whose shopper carted)."""
    enqueued: int = 0
    by_flow: dict[str, int] = dataclasses.field(default_factory=dict)
    """Events queued per flow (``cart``, ``browse``, ``registration``)."""


class Scanner:
    """Finds rows idle past their flow's ``after`` and queues their events."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock = utcnow) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._flows = [f for f in flows(settings) if f.settings.enabled]

    def scan(self) -> ScanResult:
        """One pass over everything due now, flow by flow, in batches; bounded."""
        result = ScanResult()
        now = self._clock()
        for flow in self._flows:
            for _ in range(MAX_BATCHES_PER_SCAN):
                with self._engine.begin() as conn:
                    found = self._scan_batch(conn, flow, now, result)
                if found < flow.settings.scan_batch:
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

    def _scan_batch(self, conn: Connection, flow: Flow, now: datetime, result: ScanResult) -> int:
        settings = flow.settings
        rows = activity.take_due(conn, flow.subject, now, settings.after, settings.scan_batch)
        events: list[NewEvent] = []
        contacts = [c for c in map(flow.contact, rows) if c]
        refused = consent.opted_out(conn, contacts) if settings.marketing else set()
        for row in rows:
            reason = self._skip_reason(conn, flow, row, now, refused)
            if reason is None:
                events.append(flow.event(row))
                result.abandoned += 1
                subject = flow.subject.value
                result.by_flow[subject] = result.by_flow.get(subject, 0) + 1
                continue
            cancelled = reason is SkipReason.CANCELLED
            state = FlowState.CONVERTED if cancelled else FlowState.SUPPRESSED
            key = activity.key_of(flow.subject, row)
            activity.set_outcome(conn, flow.subject, key, state, reason)
            if cancelled:
                result.converted += 1
            else:
                result.suppressed += 1
        result.enqueued += enqueue(conn, events, now)
        return len(rows)

    def _skip_reason(
        self, conn: Connection, flow: Flow, row: Row, now: datetime, refused: set[str]
    ) -> SkipReason | None:
        """Why a due row emits nothing (cancelled: converted; else suppressed); None: emit."""
        contact = flow.contact(row)
        if not contact:
            return SkipReason.NO_CONTACT
        if contact in refused:
            return SkipReason.OPTED_OUT
        if flow.cancelled(conn, row):
            return SkipReason.CANCELLED
        settings = flow.settings
        if not caps.take(conn, settings.event_type_key, contact, now, settings.contact_interval):
            return SkipReason.CAPPED
        return None

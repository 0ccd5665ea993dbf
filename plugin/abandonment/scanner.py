"""Abandonment detection: idle carts, browses and registrations become outbox rows.

One transaction per batch moves due rows from ``active`` to ``abandoned`` with a conditional
``UPDATE … RETURNING`` and inserts their outbox rows, so two scanners racing can never enqueue
the same abandonment twice, and a row touched meanwhile is not due any more.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from sqlalchemy import Connection, Engine, select, update

from ..clock import Clock, utcnow
from ..config import Settings
from ..storage import caps
from ..storage.engines import locked_batch
from ..storage.enums import FlowState
from ..storage.outbox import NewEvent, enqueue
from .flows import Flow, Row, due_condition, flows, opted_out

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
        due = due_condition(flow, now)
        batch = locked_batch(
            select(flow.key)
            .where(due)
            .order_by(flow.table.c.last_activity_at)
            .limit(flow.settings.scan_batch)
        )
        rows = conn.execute(
            update(flow.table)
            .where(flow.key == batch.c[flow.key.name], due)
            .values(state=FlowState.ABANDONED.value)
            .returning(*flow.table.c)
        ).all()
        events: list[NewEvent] = []
        contacts = [c for c in map(flow.contact, rows) if c]
        refused = opted_out(conn, contacts) if flow.settings.marketing else set()
        for row in rows:
            state, reason = self._outcome(conn, flow, row, now, refused)
            if state is FlowState.ABANDONED:
                events.append(flow.event(row))
                result.abandoned += 1
                result.by_flow[flow.subject] = result.by_flow.get(flow.subject, 0) + 1
                continue
            conn.execute(
                update(flow.table)
                .where(flow.key == row._mapping[flow.key.name])
                .values(state=state.value, skip_reason=reason)
            )
            if state is FlowState.CONVERTED:
                result.converted += 1
            else:
                result.suppressed += 1
        result.enqueued += enqueue(conn, events, now)
        return len(rows)

    def _outcome(
        self, conn: Connection, flow: Flow, row: Row, now: datetime, refused: set[str]
    ) -> tuple[FlowState, str]:
        """What becomes of a due row: abandoned (emit), converted or suppressed, and why."""
        contact = flow.contact(row)
        if not contact:
            return FlowState.SUPPRESSED, "no_contact"
        if contact in refused:
            return FlowState.SUPPRESSED, "opted_out"
        if flow.cancelled(conn, row):
            return FlowState.CONVERTED, "cancelled"
        settings = flow.settings
        if not caps.take(conn, settings.event_type_key, contact, now, settings.contact_interval):
            return FlowState.SUPPRESSED, "capped"
        return FlowState.ABANDONED, ""

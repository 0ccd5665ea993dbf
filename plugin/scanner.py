"""Abandonment detection: idle carts become ``abandoned_cart`` outbox rows.

One transaction per batch moves due carts from ``active`` to ``abandoned`` with a conditional
``UPDATE … RETURNING`` and inserts their outbox rows, so two scanners racing can never enqueue
the same abandonment twice, and a cart touched meanwhile is not due any more.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime

from sqlalchemy import Connection, Engine, Row, and_, select, update

from plugin import caps
from plugin.clock import Clock, utcnow
from plugin.config import Settings
from plugin.db import locked_batch
from plugin.events import build_items_event
from plugin.items import items_total
from plugin.models import CartState, carts
from plugin.outbox import NewEvent, enqueue

log = logging.getLogger(__name__)

MAX_BATCHES_PER_SCAN = 1000


@dataclasses.dataclass
class ScanResult:
    """What one scan pass did."""

    abandoned: int = 0
    """Carts that came due and got an ``abandoned_cart`` event."""
    suppressed: int = 0
    """Carts that came due with no contact, or whose contact was capped."""
    enqueued: int = 0


class Scanner:
    """Finds carts idle for ``abandoned_cart.after`` and queues their events."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock = utcnow) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock

    def scan(self) -> ScanResult:
        """One pass over everything due now, in batches; bounded."""
        result = ScanResult()
        if not self._settings.abandoned_cart.enabled:
            return result
        now = self._clock()
        for _ in range(MAX_BATCHES_PER_SCAN):
            with self._engine.begin() as conn:
                found = self._scan_batch(conn, now, result)
            if found < self._settings.abandoned_cart.scan_batch:
                break
        if result.abandoned or result.suppressed:
            log.info(
                "scan: %d carts abandoned, %d suppressed, %d events queued",
                result.abandoned,
                result.suppressed,
                result.enqueued,
            )
        return result

    def _scan_batch(self, conn: Connection, now: datetime, result: ScanResult) -> int:
        flow = self._settings.abandoned_cart
        due = and_(
            carts.c.state == CartState.ACTIVE.value,
            carts.c.last_activity_at <= now - flow.after,
        )
        batch = locked_batch(
            select(carts.c.cart_id)
            .where(due)
            .order_by(carts.c.last_activity_at)
            .limit(flow.scan_batch)
        )
        rows = conn.execute(
            update(carts)
            .where(carts.c.cart_id == batch.c.cart_id, due)
            .values(state=CartState.ABANDONED.value)
            .returning(*carts.c)
        ).all()
        events: list[NewEvent] = []
        for row in rows:
            reason = self._skip_reason(conn, row, now)
            if reason:
                conn.execute(
                    update(carts)
                    .where(carts.c.cart_id == row.cart_id)
                    .values(state=CartState.SUPPRESSED.value, skip_reason=reason)
                )
                result.suppressed += 1
            else:
                events.append(self.cart_event(row))
                result.abandoned += 1
        result.enqueued += enqueue(conn, events, now)
        return len(rows)

    def _skip_reason(self, conn: Connection, row: Row[tuple[object, ...]], now: datetime) -> str:
        flow = self._settings.abandoned_cart
        if not row.email:
            return "no_contact"
        if not caps.take(conn, flow.event_type_key, row.email, now, flow.contact_interval):
            return "capped"
        return ""

    def cart_event(self, row: Row[tuple[object, ...]]) -> NewEvent:
        """The ``abandoned_cart`` event for a cart row at its current version."""
        flow = self._settings.abandoned_cart
        items = json.loads(str(row.items))
        tail = [("cart_id", row.cart_id), ("total", items_total(items))]
        if row.currency:
            tail.append(("currency", row.currency))
        if row.restore_url:
            tail.append(("cart_url", row.restore_url))
        body, dropped = build_items_event(
            flow.event_type_key, str(row.email), [("email", row.email)], items, tail, self._settings
        )
        if dropped:
            log.warning(
                "cart %s: %d of %d products left out to fit the %d-byte event limit",
                row.cart_id,
                dropped,
                len(items),
                self._settings.api.max_event_bytes,
            )
        return NewEvent(
            dedupe_key=f"{flow.event_type_key}:{row.cart_id}:{row.version}",
            event_type_key=flow.event_type_key,
            key_value=str(row.email),
            api_path=self._settings.api.event_path,
            body=body,
            subject_type="cart",
            subject_id=str(row.cart_id),
            subject_version=int(str(row.version)),
        )

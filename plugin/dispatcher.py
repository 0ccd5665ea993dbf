"""The delivery loop: claim → check still wanted → send → settle.

Claims and settlements are short transactions; the HTTP call happens between them with no
transaction open. Sends run on a bounded pool of threads so a slow API does not serialise
delivery. On shutdown, sends in progress finish and rows not yet sent are released.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Connection, Engine, select

from plugin import caps, outbox, pause
from plugin.clock import Clock, utcnow
from plugin.config import Settings
from plugin.models import CartState, Status, carts
from plugin.transport import Outcome, Result, Transport

log = logging.getLogger(__name__)

MAX_BATCHES_PER_DRAIN = 50


@dataclasses.dataclass
class DispatchResult:
    """What one dispatch pass did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    superseded: int = 0
    released: int = 0
    lost_lease: int = 0
    paused: bool = False
    full: bool = False
    """A whole batch was claimed, so more rows may be due."""

    def add(self, other: DispatchResult) -> None:
        """Accumulate another pass's counts."""
        for field in dataclasses.fields(self):
            if field.type in (bool, "bool"):
                setattr(self, field.name, getattr(self, field.name) or getattr(other, field.name))
            else:
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


class Dispatcher:
    """Delivers due outbox rows; safe to run in any number of threads, processes and hosts."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        transport: Transport,
        clock: Clock = utcnow,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._transport = transport
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._warned_no_key = False

    def dispatch(self) -> DispatchResult:
        """One claim of up to ``delivery.batch_size`` rows, sent and settled."""
        delivery = self._settings.delivery
        if not self._transport.ready:
            if not self._warned_no_key:
                log.error("delivery waits: no api.key is set (SHOP_EVENTS_API_KEY)")
                self._warned_no_key = True
            return DispatchResult(paused=True)
        now = self._clock()
        with self._engine.begin() as conn:
            current = pause.current(conn)
            if current is not None and current.active(now):
                return DispatchResult(paused=True)
            # after a pause, one row probes the key before a whole batch is tried
            limit = 1 if current is not None else delivery.batch_size
            claimed = outbox.claim(conn, now, delivery.lease, limit)
        result = DispatchResult(claimed=len(claimed), full=len(claimed) == limit)
        if not claimed:
            return result
        lock = threading.Lock()

        def deliver(row: outbox.Claimed) -> None:
            outcome = self._deliver(row)
            with lock:
                setattr(result, outcome, getattr(result, outcome) + 1)

        if len(claimed) == 1 or delivery.threads == 1:
            for row in claimed:
                deliver(row)
        else:
            list(self._executor().map(deliver, claimed))
        return result

    def drain(self) -> DispatchResult:
        """Dispatch until nothing is due, delivery pauses or the loop's bound is reached."""
        total = DispatchResult()
        for _ in range(MAX_BATCHES_PER_DRAIN):
            if self.stopping.is_set():
                break
            result = self.dispatch()
            total.add(result)
            if result.paused or not result.full:
                break
        return total

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(
                    max_workers=self._settings.delivery.threads,
                    thread_name_prefix="shop-events-send",
                )
                self._pool_pid = os.getpid()
            return self._pool

    def close(self) -> None:
        """Stop taking new sends, finish the ones in progress, and free the threads."""
        self.stopping.set()
        with self._lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.shutdown(wait=True)
            self._pool = None
        self._transport.close()

    def _deliver(self, row: outbox.Claimed) -> str:
        """Send one claimed row and settle it; returns the name of the counter to bump."""
        with self._engine.begin() as conn:
            if self.stopping.is_set() or self._paused(conn):
                outbox.release(conn, row, self._clock())
                return "released"
            reason = self._unwanted(conn, row)
            if reason:
                if outbox.settle(conn, row, Status.SUPERSEDED, last_error=reason):
                    caps.give_back(conn, row.event_type_key, row.key_value, row.created_at)
                    log.info("event %d (%s) superseded: %s", row.id, row.event_type_key, reason)
                    return "superseded"
                return "lost_lease"
        sent = self._transport.send(row.api_path, row.body.encode("utf-8"), self.stopping)
        with self._engine.begin() as conn:
            return self._settle(conn, row, sent)

    def _paused(self, conn: Connection) -> bool:
        current = pause.current(conn)
        return current is not None and current.active(self._clock())

    def _unwanted(self, conn: Connection, row: outbox.Claimed) -> str:
        """Why a queued event must not go out any more, or '' when it still should."""
        if row.subject_type != "cart":
            return ""
        cart = conn.execute(
            select(carts.c.state, carts.c.version).where(carts.c.cart_id == row.subject_id)
        ).first()
        if cart is None:
            return "cart no longer exists"
        if cart.state == CartState.CONVERTED.value:
            return "the shopper placed an order"
        if cart.state == CartState.CLEARED.value:
            return "the cart was emptied"
        if cart.version != row.subject_version:
            return f"the cart changed (version {row.subject_version} → {cart.version})"
        return ""

    def _settle(self, conn: Connection, row: outbox.Claimed, sent: Result) -> str:
        now = self._clock()
        delivery = self._settings.delivery
        attempts = row.attempts + 1
        if sent.outcome is Outcome.SENT:
            pause.resume(conn)
            done = outbox.settle(
                conn,
                row,
                Status.SENT,
                attempts=attempts,
                sent_at=now,
                response_status=sent.status,
                last_error=None,
            )
            return "sent" if done else "lost_lease"
        if sent.outcome is Outcome.AUTH:
            until = now + delivery.auth_pause
            if pause.pause(conn, f"HTTP {sent.status}: {sent.text}"[:500], now, until):
                log.error(
                    "delivery paused until %s: the platform answered %s (check api.key); "
                    "no attempts are spent while paused",
                    until.isoformat(timespec="seconds"),
                    sent.status,
                )
            outbox.settle(
                conn,
                row,
                Status.PENDING,
                next_attempt_at=now,
                response_status=sent.status,
                last_error=f"HTTP {sent.status}: {sent.text}",
            )
            return "released"
        if sent.outcome is Outcome.DEAD or outbox.gives_up(delivery, attempts, row.created_at, now):
            error = _describe(sent)
            if sent.outcome is Outcome.RETRY:
                error = f"gave up after {attempts} attempts: {error}"
            done = outbox.settle(
                conn,
                row,
                Status.DEAD,
                attempts=attempts,
                response_status=sent.status,
                last_error=error,
            )
            if done:
                log.warning("event %d (%s) dead: %s", row.id, row.event_type_key, error)
            return "dead" if done else "lost_lease"
        delay = outbox.backoff(delivery, attempts, sent.retry_after)
        done = outbox.settle(
            conn,
            row,
            Status.PENDING,
            attempts=attempts,
            next_attempt_at=now + delay,
            response_status=sent.status,
            last_error=_describe(sent),
        )
        return "retried" if done else "lost_lease"


def _describe(sent: Result) -> str:
    status = f"HTTP {sent.status}" if sent.status is not None else "no response"
    return f"{status}: {sent.text}" if sent.text else status

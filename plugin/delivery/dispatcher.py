"""The delivery loop: claim → check still wanted → send → settle as :mod:`.policy` decides.

Claims and settlements are short transactions; the HTTP call happens between them with no
transaction open. Sends run on a bounded pool of threads so a slow API does not serialise
delivery. On shutdown, sends in progress finish and rows not yet sent are released.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from enum import StrEnum
from typing import assert_never

from sqlalchemy import Connection, Engine

from ..abandonment.flows import unwanted
from ..clock import Clock, utcnow
from ..config import Settings
from ..payload.orders_api import ORDERS_API_PATH
from ..payload.validation import encode_body
from ..storage import caps, outbox, pause
from ..storage.enums import OutboxStatus
from . import policy
from .transport import Transport

log = logging.getLogger(__name__)

Finished = tuple[list[outbox.Claimed], policy.Result | None]
"""A job and its outcome (None: not tried)."""

MAX_BATCHES_PER_DRAIN = 50


class Settled(StrEnum):
    """How one claimed row ended this pass (a :class:`DispatchResult` count each)."""

    SENT = "sent"
    RETRIED = "retried"
    DEAD = "dead"
    SUPERSEDED = "superseded"
    RELEASED = "released"
    """Back unsent, no attempt spent: not tried, or the key was refused."""
    LOST_LEASE = "lost_lease"
    """Another worker took the row over (its lease had expired) before this one settled it."""


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

    def count(self, settled: Settled) -> None:
        """Count one row that ended as ``settled``."""
        match settled:
            case Settled.SENT:
                self.sent += 1
            case Settled.RETRIED:
                self.retried += 1
            case Settled.DEAD:
                self.dead += 1
            case Settled.SUPERSEDED:
                self.superseded += 1
            case Settled.RELEASED:
                self.released += 1
            case Settled.LOST_LEASE:
                self.lost_lease += 1
            case _:
                assert_never(settled)

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
        self._pause_seen = False
        """Whether this process saw a delivery pause since its last success lifted one."""
        ref = weakref.ref(self)

        def after_fork() -> None:
            dispatcher = ref()
            if dispatcher is not None:
                dispatcher._after_fork()

        os.register_at_fork(after_in_child=after_fork)

    def _after_fork(self) -> None:
        # A forked child must not use the parent's pooled database connections: two processes
        # on one socket corrupt each other's sessions. close=False leaves them to the parent.
        self._engine.dispose(close=False)
        self._lock = threading.Lock()  # a parent thread may have held it at the fork

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
            if current is not None:
                self._pause_seen = True
            claimed = outbox.claim(conn, now, delivery.lease, limit)
        result = DispatchResult(claimed=len(claimed), full=len(claimed) == limit)
        if not claimed:
            return result
        with self._engine.begin() as conn:
            wanted = self._screen(conn, claimed, result)
        refused = threading.Event()  # a 401/403 in this batch: the rest is not tried

        def send(job: list[outbox.Claimed]) -> Finished:
            return job, self._send(job, refused)

        jobs = self._jobs(wanted)
        if len(jobs) == 1 or delivery.threads == 1:
            finished: Iterable[Finished] = map(send, jobs)
        else:
            pool = self._executor()
            finished = (f.result() for f in as_completed([pool.submit(send, j) for j in jobs]))
        # Settled in small groups as they finish: one write transaction per group, not per
        # event, while a finished send waits at most for a few others before it is recorded.
        group: list[Finished] = []
        for done in finished:
            group.append(done)
            if len(group) >= delivery.threads:
                self._settle_group(group, result)
                group = []
        if group:
            self._settle_group(group, result)
        return result

    def _jobs(self, claimed: list[outbox.Claimed]) -> list[list[outbox.Claimed]]:
        """One request per event; Orders API rows go together, up to ``orders.api_batch``."""
        orders = [row for row in claimed if row.api_path == ORDERS_API_PATH]
        size = self._settings.orders.api_batch
        return [[row] for row in claimed if row.api_path != ORDERS_API_PATH] + [
            orders[i : i + size] for i in range(0, len(orders), size)
        ]

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

    def _screen(
        self, conn: Connection, claimed: list[outbox.Claimed], result: DispatchResult
    ) -> list[outbox.Claimed]:
        """The claimed rows still to send, checked in one transaction for the whole batch:
        on shutdown or pause the rest go back unsent, and events no longer wanted (an order,
        a change, an opt-out since they were queued) are superseded.
        """
        if self.stopping.is_set() or self._paused(conn):
            now = self._clock()
            result.released += sum(outbox.release(conn, row, now) for row in claimed)
            return []
        wanted = []
        for row in claimed:
            reason = unwanted(
                conn,
                self._settings,
                row.subject_type,
                row.subject_id,
                row.subject_version,
                row.key_value,
            )
            if not reason:
                wanted.append(row)
            elif outbox.settle(conn, row, OutboxStatus.SUPERSEDED, last_error=reason):
                caps.give_back(conn, row.event_type_key, row.key_value, row.created_at)
                log.info("event %d (%s) superseded: %s", row.id, row.event_type_key, reason)
                result.count(Settled.SUPERSEDED)
            else:
                result.count(Settled.LOST_LEASE)
        return wanted

    def _send(self, job: list[outbox.Claimed], refused: threading.Event) -> policy.Result | None:
        """Send rows as one request; None when they are not tried (shutdown, bad key)."""
        if self.stopping.is_set() or refused.is_set():
            return None
        sent = self._transport.send(job[0].api_path, _request_body(job), self.stopping)
        if policy.classify(sent.status) is policy.Outcome.AUTH:
            refused.set()
        return sent

    def _settle_group(self, group: list[Finished], result: DispatchResult) -> None:
        """Record finished sends in one transaction; rows not tried go back unsent."""
        with self._engine.begin() as conn:
            for job, sent in group:
                for row in job:
                    now = self._clock()
                    decision = policy.decide(sent, row, self._settings.delivery, now)
                    result.count(self._apply(conn, row, decision, now))

    def _paused(self, conn: Connection) -> bool:
        current = pause.current(conn)
        if current is not None:
            self._pause_seen = True
        return current is not None and current.active(self._clock())

    def _apply(
        self, conn: Connection, row: outbox.Claimed, decision: policy.Decision, now: datetime
    ) -> Settled:
        """Record what the policy decided for ``row``: the one place a send's result is stored."""
        match decision:
            case policy.Sent(attempts=attempts, status=status):
                if self._pause_seen:  # a success ends a pause; without one, skip the write
                    self._pause_seen = False
                    pause.resume(conn)
                done = outbox.settle(
                    conn,
                    row,
                    OutboxStatus.SENT,
                    attempts=attempts,
                    sent_at=now,
                    response_status=status,
                    last_error=None,
                )
                return Settled.SENT if done else Settled.LOST_LEASE
            case policy.Retry(at=at, error=error, attempts=attempts, status=status):
                done = outbox.settle(
                    conn,
                    row,
                    OutboxStatus.PENDING,
                    attempts=attempts,
                    next_attempt_at=at,
                    response_status=status,
                    last_error=error,
                )
                return Settled.RETRIED if done else Settled.LOST_LEASE
            case policy.Dead(error=error, attempts=attempts, status=status):
                done = outbox.settle(
                    conn,
                    row,
                    OutboxStatus.DEAD,
                    attempts=attempts,
                    response_status=status,
                    last_error=error,
                )
                if done:
                    log.warning("event %d (%s) dead: %s", row.id, row.event_type_key, error)
                return Settled.DEAD if done else Settled.LOST_LEASE
            case policy.Pause(until=until, error=error, status=status):
                if pause.pause(conn, decision.reason, now, until):
                    log.error(
                        "delivery paused until %s: the platform answered %s (check api.key); "
                        "no attempts are spent while paused",
                        until.isoformat(timespec="seconds"),
                        status,
                    )
                # counted as released even if the lease was lost: no attempt was spent either way
                outbox.settle(
                    conn,
                    row,
                    OutboxStatus.PENDING,
                    next_attempt_at=now,
                    response_status=status,
                    last_error=error,
                )
                return Settled.RELEASED
            case policy.Released():
                return Settled.RELEASED if outbox.release(conn, row, now) else Settled.LOST_LEASE
            case _:
                assert_never(decision)


def _request_body(rows: list[outbox.Claimed]) -> bytes:
    """The bytes to send: the event's stored body, or ``{"orders": [...]}`` for the Orders API."""
    if rows[0].api_path == ORDERS_API_PATH:
        return encode_body({"orders": [json.loads(row.body) for row in rows]})
    assert len(rows) == 1
    return rows[0].body.encode("utf-8")

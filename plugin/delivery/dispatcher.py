"""The delivery loop: claim → check still wanted → send → settle as :mod:`.policy` decides.

Claims and settlements are short transactions; the HTTP call happens between them with no
transaction open. Sends run on a bounded pool of threads so a slow API does not serialise
delivery. On shutdown, sends in progress finish and rows not yet sent are released.

Two bounds keep a row from going out twice. A row starts its send only with lease time to
finish it: a row that waited in its batch until its lease ran low renews it first (on the
database's clock), and one taken over meanwhile is not sent. And no send starts while more
than ``delivery.threads`` finished sends wait to be recorded, so a crash re-sends at most what
was on the wire and one small group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from enum import StrEnum
from typing import Any, assert_never

from sqlalchemy import Connection, Engine

from .. import metrics
from ..abandonment.flows import unwanted
from ..clock import Clock, utcnow
from ..config import Settings, format_duration
from ..payload.orders_api import ORDERS_API_PATH
from ..payload.validation import encode_body
from ..storage import caps, outbox, pause
from ..storage.enums import OutboxStatus
from . import policy
from .transport import Transport

log = logging.getLogger(__name__)

MAX_BATCHES_PER_DRAIN = 50
UNSENDABLE = "cannot be sent"
"""How the error of a row whose request cannot be built begins."""
ERROR_MAX = 2000


def _monotonic() -> float:
    # real elapsed time on this host, whatever its wall clock does (and freezegun, in tests)
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclasses.dataclass
class _Job:
    """One request: its rows (one event, or Orders API rows together) and its body."""

    rows: list[outbox.Claimed]
    body: bytes
    leased_at: float
    """When the rows' lease last began, at the latest (this host's monotonic clock)."""
    lost: set[int] = dataclasses.field(default_factory=set)
    """Rows another worker took over before the send: not sent, not settled here."""


Finished = tuple[_Job, policy.Result | None]
"""A job and its outcome (None: not tried)."""


class _Window:
    """Finished sends not yet recorded: no send starts while more than ``limit`` wait."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._waiting = 0
        self._closed = False
        self._cond = threading.Condition()

    def enter(self) -> bool:
        """Wait for room to start a send; False once the batch is over (nothing more starts)."""
        with self._cond:
            self._cond.wait_for(lambda: self._waiting <= self._limit or self._closed)
            return not self._closed

    def finished(self) -> None:
        """One job is done (sent or not) and waits to be recorded."""
        with self._cond:
            self._waiting += 1

    def recorded(self, count: int) -> None:
        """``count`` finished jobs were recorded."""
        with self._cond:
            self._waiting -= count
            self._cond.notify_all()

    def close(self) -> None:
        """The batch is over: jobs still waiting to start are not tried."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Batch:
    """What the sends of one claim share."""

    def __init__(self, threads: int) -> None:
        self.window = _Window(threads)
        self.refused = threading.Event()
        """A 401/403 came, and the key is not known to be good: nothing more starts."""
        self._verdict_lock = threading.Lock()
        self._verdict: tuple[bool | None] | None = None
        self.circuit = threading.Event()
        """The shared circuit is open: nothing more starts, unreachable sends spend nothing."""
        self.probing = False
        """This batch is the circuit's probe: its one event checks whether the API answers."""

    def key_verdict(self, check: Callable[[], bool | None]) -> bool | None:
        """The key check's verdict, asked once per batch however many sends were refused."""
        with self._verdict_lock:
            if self._verdict is None:
                self._verdict = (check(),)
            return self._verdict[0]


class Settled(StrEnum):
    """How one claimed row ended this pass (a :class:`DispatchResult` count each)."""

    SENT = "sent"
    RETRIED = "retried"
    DEAD = "dead"
    SUPERSEDED = "superseded"
    RELEASED = "released"
    """Back unsent, no attempt spent: not tried, or the key was refused."""
    LOST_LEASE = "lost_lease"
    """Another worker took the row over (its lease had expired) before this one sent or
    settled it."""


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
    circuit_open: bool = False
    """The shared circuit is open: the API looked unreachable (it is also ``paused``)."""
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
        self._circuit_lock = threading.Lock()
        self._streak = 0
        """Sends in a row, in this process, that got no response or a 5xx."""
        self._streak_rows: list[int] = []
        """The rows those sends retried: given their attempt back if the circuit opens."""
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
        self._circuit_lock = threading.Lock()

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
            circuit = pause.circuit(conn)
        limit = delivery.batch_size
        probing = False
        if circuit is not None:
            if not circuit.probe_due(now):
                return DispatchResult(paused=True, circuit_open=True)
            with self._engine.begin() as conn:  # one probe per interval, whoever runs
                if not pause.take_probe(conn, now, now + delivery.probe_interval):
                    return DispatchResult(paused=True, circuit_open=True)
            limit, probing = 1, True
        if current is not None:
            self._pause_seen = True
            if current.active(now):
                return DispatchResult(paused=True)
            verdict = self._check_key_after_pause(now)
            if verdict is False:
                return DispatchResult(paused=True)
            if verdict is None:
                limit = 1  # no verdict on the key: one event probes it before a whole batch
        leased_at = _monotonic()  # taken before the claim: the leases run at least from here
        with self._engine.begin() as conn:
            claimed = outbox.claim(conn, now, delivery.lease, limit)
        result = DispatchResult(claimed=len(claimed), full=len(claimed) == limit)
        if not claimed:
            if probing:
                self._probe_without_event(result)
            return result
        with self._engine.begin() as conn:
            wanted = self._screen(conn, claimed, result)
            jobs = self._jobs(conn, wanted, leased_at, result)
        batch = _Batch(delivery.threads)
        batch.probing = probing

        def send(job: _Job) -> Finished:
            try:
                return job, self._send(job, batch)
            except Exception as exc:  # one job's failure must not strand the others in flight
                log.exception("sending event %d failed", job.rows[0].id)
                return job, policy.Result(None, f"{type(exc).__name__}: {exc}"[:ERROR_MAX])
            finally:
                batch.window.finished()

        try:
            if len(jobs) == 1 or delivery.threads == 1:
                finished: Iterable[Finished] = map(send, jobs)
            else:
                pool = self._executor()
                futures = [pool.submit(send, job) for job in jobs]
                finished = (f.result() for f in as_completed(futures))
            # Settled in small groups as they finish: one write transaction per group, not per
            # event, while a finished send waits at most for a few others before it is recorded.
            group: list[Finished] = []
            for done in finished:
                group.append(done)
                if len(group) >= delivery.threads:
                    self._settle_group(group, result, batch)
                    batch.window.recorded(len(group))
                    group = []
            if group:
                self._settle_group(group, result, batch)
                batch.window.recorded(len(group))
        finally:
            batch.window.close()
        if batch.circuit.is_set():
            result.paused = result.circuit_open = True
        return result

    def _probe_without_event(self, result: DispatchResult) -> None:
        """The circuit's probe found no event due: a check of the key asks the API instead."""
        check = self._transport.check_key(self.stopping)
        if check is not None and not policy.unreachable(check):
            with self._engine.begin() as conn:
                self._close_circuit(conn)
        else:
            result.paused = result.circuit_open = True

    def _close_circuit(self, conn: Connection) -> None:
        with self._circuit_lock:
            self._streak = 0
            self._streak_rows.clear()
        if pause.close_circuit(conn):
            log.warning("the API answers again: the circuit is closed and delivery resumes")

    def _circuit_step(
        self, conn: Connection, sent: policy.Result | None, batch: _Batch, now: datetime
    ) -> bool:
        """Count one finished send toward the circuit rule; True while the circuit holds its
        rows (they spend no attempt). The send that trips the rule opens the circuit for every
        process and gives the streak's earlier rows their attempt back."""
        if sent is None:
            return batch.circuit.is_set()
        delivery = self._settings.delivery
        with self._circuit_lock:
            self._streak = policy.streak_after(self._streak, sent)
            if not policy.unreachable(sent):
                self._streak_rows.clear()
                answered = True
            elif batch.probing or batch.circuit.is_set():
                return True
            elif pause.circuit(conn) is not None:  # another process opened it meanwhile
                batch.circuit.set()
                return True
            elif not policy.circuit_trips(self._streak, delivery):
                return False
            else:
                answered = False
                batch.circuit.set()
                forgiven = outbox.forgive(conn, self._streak_rows)
                self._streak_rows.clear()
        if answered:
            if batch.probing:
                self._close_circuit(conn)
            return False
        until = now + delivery.probe_interval
        reason = policy.describe(sent)[: policy.PAUSE_REASON_MAX]
        if pause.open_circuit(conn, reason, now, until):
            log.error(
                "delivery circuit open: %d sends in a row got no answer from the API (%s); "
                "no attempts are spent, one event probes it every %s (%d attempts given back)",
                self._streak,
                reason,
                format_duration(delivery.probe_interval),
                forgiven,
            )
        return True

    def _check_key_after_pause(self, now: datetime) -> bool | None:
        """The pause ran out: ask whether the key is good now, without any event. A good key
        lifts the pause, a refused one renews it; None when the check gives no verdict."""
        check = self._transport.check_key(self.stopping)
        verdict = policy.key_verdict(check)
        if verdict is True:
            self._pause_seen = False
            with self._engine.begin() as conn:
                if pause.resume(conn):
                    log.warning("the API key was accepted: delivery resumes")
        elif verdict is False and check is not None:
            with self._engine.begin() as conn:
                self._pause(conn, policy.key_refused(check, self._settings.delivery, now), now)
        return verdict

    def _pause(self, conn: Connection, decision: policy.Pause, now: datetime) -> None:
        if pause.pause(conn, decision.reason, now, decision.until):
            log.error(
                "delivery paused until %s: the platform answered %s (check api.key); "
                "no attempts are spent while paused",
                decision.until.isoformat(timespec="seconds"),
                decision.status,
            )

    def _jobs(
        self,
        conn: Connection,
        rows: list[outbox.Claimed],
        leased_at: float,
        result: DispatchResult,
    ) -> list[_Job]:
        """One request per event; Orders API rows go together, up to ``orders.api_batch``.

        A row whose request cannot be built (its stored body is no longer valid) is dead with
        the reason, and the others go on without it.
        """
        jobs = []
        orders: list[tuple[outbox.Claimed, dict[str, Any]]] = []
        for row in rows:
            try:
                if row.api_path == ORDERS_API_PATH:
                    orders.append((row, _order(row)))
                else:
                    jobs.append(_Job([row], row.body.encode("utf-8"), leased_at))
            except (ValueError, TypeError) as exc:  # UnicodeError and JSON errors included
                self._unsendable(conn, row, exc, result)
        size = self._settings.orders.api_batch
        for i in range(0, len(orders), size):
            chunk = orders[i : i + size]
            try:
                body = encode_body({"orders": [order for _, order in chunk]})
            except (ValueError, TypeError):
                good = []
                for row, order in chunk:  # find the orders that cannot be encoded
                    try:
                        encode_body({"orders": [order]})
                    except (ValueError, TypeError) as exc:
                        self._unsendable(conn, row, exc, result)
                    else:
                        good.append((row, order))
                if not good:
                    continue
                chunk = good
                body = encode_body({"orders": [order for _, order in chunk]})
            jobs.append(_Job([row for row, _ in chunk], body, leased_at))
        return jobs

    def _unsendable(
        self, conn: Connection, row: outbox.Claimed, exc: Exception, result: DispatchResult
    ) -> None:
        error = f"{UNSENDABLE}: the stored body is not valid ({type(exc).__name__}: {exc})"
        if outbox.settle(conn, row, OutboxStatus.DEAD, last_error=error[:ERROR_MAX]):
            log.warning("event %d (%s) dead: %s", row.id, row.event_type_key, error)
            result.count(metrics.settled(row.event_type_key, Settled.DEAD))
        else:
            result.count(Settled.LOST_LEASE)

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
                metrics.SEND_CONCURRENCY.set(self._settings.delivery.threads)
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
                result.count(metrics.settled(row.event_type_key, Settled.SUPERSEDED))
            else:
                result.count(Settled.LOST_LEASE)
        return wanted

    def _send(self, job: _Job, batch: _Batch) -> policy.Result | None:
        """Send one job's request; None when it is not tried (shutdown, bad key, open circuit,
        lost lease)."""
        if self.stopping.is_set() or batch.refused.is_set() or batch.circuit.is_set():
            return None
        if not batch.window.enter():
            return None
        if not self._transport.wait_turn(self.stopping) or batch.refused.is_set():
            return None
        try:
            if not self._keep_lease(job):
                return None
        except Exception:  # not sent: the row goes back with no attempt spent
            log.exception("event %d: its lease could not be renewed", job.rows[0].id)
            return None
        sent = metrics.timed_send(self._transport.post, job.rows[0].api_path, job.body)
        if policy.classify(sent.status) is policy.Outcome.AUTH:
            batch.refused.set()  # nothing more starts until the key is checked
            verdict = batch.key_verdict(
                lambda: policy.key_verdict(self._transport.check_key(self.stopping))
            )
            if verdict is True:  # the key is good: the platform refused this event only
                batch.refused.clear()
                sent = dataclasses.replace(sent, key_valid=True)
        return sent

    def _keep_lease(self, job: _Job) -> bool:
        """Make sure the job's rows hold their lease long enough for the send and its
        settlement: renewed when less than two request deadlines are left; False if a row was
        taken over meanwhile."""
        lease = self._settings.delivery.lease
        needed = 2 * self._transport.deadline.total_seconds()
        if lease.total_seconds() - (_monotonic() - job.leased_at) >= needed:
            return True
        renewed_at = _monotonic()
        with self._engine.begin() as conn:
            for row in job.rows:
                if outbox.renew(conn, row, lease) is None:
                    job.lost.add(row.id)
        job.leased_at = renewed_at
        return not job.lost

    def _settle_group(self, group: list[Finished], result: DispatchResult, batch: _Batch) -> None:
        """Record finished sends in one transaction, each row on its own: a row that cannot be
        recorded is left to its lease and takes no other row with it."""
        delivery = self._settings.delivery
        with self._engine.begin() as conn:
            for job, sent in group:
                held = self._circuit_step(conn, sent, batch, self._clock())
                for row in job.rows:
                    if row.id in job.lost:
                        result.count(Settled.LOST_LEASE)
                        continue
                    now = self._clock()
                    try:
                        with conn.begin_nested():
                            decision = policy.decide(sent, row, delivery, now, circuit_open=held)
                            settled = self._apply(conn, row, decision, now)
                            if settled is Settled.RETRIED and sent and policy.unreachable(sent):
                                with self._circuit_lock:
                                    self._streak_rows.append(row.id)
                            result.count(metrics.settled(row.event_type_key, settled))
                    except Exception:
                        log.exception(
                            "event %d (%s): its result could not be recorded; it goes again "
                            "once its lease runs out",
                            row.id,
                            row.event_type_key,
                        )

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
            case policy.Pause(error=error, status=status):
                self._pause(conn, decision, now)
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
            case policy.Held(error=error, status=status):
                # due from its creation time, so the backlog resumes in creation order
                values: dict[str, Any] = {"next_attempt_at": row.created_at}
                if error is not None:
                    values.update(response_status=status, last_error=error)
                done = outbox.settle(conn, row, OutboxStatus.PENDING, **values)
                return Settled.RELEASED if done else Settled.LOST_LEASE
            case _:
                assert_never(decision)


def _order(row: outbox.Claimed) -> dict[str, Any]:
    """An Orders API row's order as stored: a JSON object, else ``ValueError``."""
    order = json.loads(row.body)
    if not isinstance(order, dict):
        raise ValueError(f"an order is a JSON object, got {type(order).__name__}")
    return order

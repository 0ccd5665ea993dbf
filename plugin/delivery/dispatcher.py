"""The delivery loop: claim → check still wanted → send → settle as :mod:`.policy` decides.

Claims and settlements are short transactions; the HTTP calls happen between them with no
transaction open. One pass is a pipeline: the loop claims the next batch while the last one's
sends are still on the wire, starts sends as the adaptive concurrency
(:mod:`.concurrency`) allows, each waits its turn at the account's rate limit
(:mod:`.limiter`), and finished sends are recorded in groups, one write transaction per group.
So a slow API is met with more sends at once, up to the account's limit, not with a slower
delivery. On shutdown, sends in progress finish and rows not yet sent are released.

Two bounds keep a row from going out twice. A row starts its send only with lease time to
finish it: a row that waited until its lease ran low renews it first (on the database's
clock), and one taken over meanwhile is not sent. And no send starts while twice the number
of sends allowed in progress are started and not yet recorded: a crash re-sends at most those.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from enum import StrEnum
from typing import Any, assert_never

from sqlalchemy import Connection, Engine

from .. import metrics
from ..abandonment.flows import step_of, unwanted
from ..clock import Clock, utcnow
from ..config import Settings, format_duration
from ..payload.erasure import ERASURE_TYPE, REDACTED_ROW, stored_query
from ..payload.validation import encode_body
from ..storage import caps, outbox, pause, reminders
from ..storage.activity import SUBJECTS
from ..storage.engines import REST_AFTER_DELIVERY, checkpoint, eased
from ..storage.enums import OutboxStatus
from . import policy
from .concurrency import AdaptiveConcurrency
from .limiter import family_of
from .transport import Transport

log = logging.getLogger(__name__)

MAX_BATCHES_PER_DRAIN = 200
"""Claims in one :meth:`Dispatcher.drain`: the scheduler's next run follows at once."""
UNRECORDED_MAX = 2
"""Sends started but not yet recorded, at most this many times the sends allowed in progress:
what a crash can send twice."""
RESULT_WAIT = 1.0
"""Longest the loop waits for a send to finish before it looks at its work again."""
UNSENDABLE = "cannot be sent"
"""How the error of a row whose request cannot be built begins."""
ERROR_MAX = 2000
CHECKPOINT_ATTEMPTS = 3
"""Attempts at checkpointing the WAL after a delivered contact erasure (see
:meth:`Dispatcher._clear_wal`)."""
REMINDER_SUBJECTS = frozenset(subject.value for subject in SUBJECTS)
"""The subjects whose events are reminders (the abandonment flows'): their delivery is kept."""


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
    ticket: int = 0
    """Its place among the sends in progress (:meth:`.AdaptiveConcurrency.take`)."""
    queued: bool = False
    """It waited for a place: the concurrency, not the work, held it back."""
    room_before: int | None = None
    """Signs of room in its family's rate seen by this process before its turn
    (:meth:`.AccountLimiter.room`)."""
    query: dict[str, str] | None = None
    """A contact erasure's query: the request is a ``DELETE`` with it, without a body."""


Finished = tuple[_Job, policy.Result | None]
"""A job and its outcome (None: not tried)."""


class _Run:
    """What the sends of one pass share."""

    def __init__(self, probing: bool) -> None:
        self.refused = threading.Event()
        """A 401/403 came, and the key is not known to be good: nothing more starts."""
        self._verdict_lock = threading.Lock()
        self._verdict: tuple[bool | None] | None = None
        self.circuit = threading.Event()
        """The shared circuit is open: nothing more starts, unreachable sends spend nothing."""
        self.probing = probing
        """This pass is the circuit's probe: its one event checks whether the API answers."""
        self.done: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        """Sends finished and waiting to be recorded."""
        self.successors = False
        """Rows of a subject were recorded since the last look: a later event of the same
        subject, held back until they were, may be due now."""
        self.batched = False
        """The last claim's rows went out in fewer requests (a batched endpoint: a thousand
        orders are one request): the next claim follows at once, not after a send."""

    def halted(self) -> bool:
        """Whether nothing more may start (a refused key, an open circuit)."""
        return self.refused.is_set() or self.circuit.is_set()

    def key_verdict(self, check: Callable[[], bool | None]) -> bool | None:
        """The key check's verdict, asked once per pass however many sends were refused."""
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

    claims: int = 0
    """How many claims the pass made."""
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
        self._concurrency = AdaptiveConcurrency(settings.delivery.threads)
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
        self._concurrency = AdaptiveConcurrency(self._settings.delivery.threads)

    def dispatch(self) -> DispatchResult:
        """One claim of up to ``delivery.batch_size`` rows, sent and settled."""
        return self._pass(1)

    def drain(self) -> DispatchResult:
        """Dispatch until nothing is due, delivery pauses or :data:`MAX_BATCHES_PER_DRAIN`
        claims were made: one pass that claims again while earlier sends are in progress (two
        when a one-event probe of the circuit or the key goes first)."""
        total = DispatchResult()
        claims = MAX_BATCHES_PER_DRAIN
        while claims > 0 and not self.stopping.is_set():
            result = self._pass(claims)
            total.add(result)
            claims -= result.claims
            if result.paused or not result.full:
                break
        return total

    def _pass(self, claims: int) -> DispatchResult:
        """Up to ``claims`` claims of ``delivery.batch_size`` rows, sent and settled; a single
        row when a probe of the circuit or of the key comes first."""
        with eased(REST_AFTER_DELIVERY):
            return self._pass_eased(claims)

    def _pass_eased(self, claims: int) -> DispatchResult:
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
        if limit == 1:
            claims = 1
        run = _Run(probing)
        result = DispatchResult()
        pending: deque[_Job] = deque()
        in_progress = 0
        more = True
        try:
            while True:
                if more and len(pending) <= self._concurrency.limit:
                    more = self._claim(limit, run, pending, result) and result.claims < claims
                in_progress += self._start(pending, run, in_progress)
                if run.halted() or self.stopping.is_set():
                    more = False
                    while pending:  # not tried: back unspent (held while the circuit is open)
                        run.done.put((pending.popleft(), None))
                        in_progress += 1
                if not in_progress:
                    if pending or more:
                        continue
                    break
                # one event a request: the next claim waits for a send to finish (claiming
                # sooner took rows ahead and cost a tenth of the rate at 100 ms)
                claim_now = more and run.batched and len(pending) <= self._concurrency.limit
                in_progress -= self._record(run, result, wait=not claim_now)
                if run.successors and result.claims < claims and not run.halted():
                    more = True  # the next event of a subject just sent may be due now
                run.successors = False
        finally:
            while in_progress:  # a failure of this loop: sends already started still finish
                in_progress -= self._record(run, result)
        if run.circuit.is_set():
            result.paused = result.circuit_open = True
        if probing and not result.claimed:
            self._probe_without_event(result)
        return result

    def _claim(self, limit: int, run: _Run, pending: deque[_Job], result: DispatchResult) -> bool:
        """Claim up to ``limit`` due rows and queue their jobs; True if the claim was full (more
        rows may be due)."""
        delivery = self._settings.delivery
        leased_at = _monotonic()  # taken before the claim: the leases run at least from here
        with self._engine.begin() as conn:
            claimed = outbox.claim(conn, self._clock(), delivery.lease, limit)
        result.claims += 1
        result.claimed += len(claimed)
        result.full = len(claimed) == limit
        if claimed:
            with self._engine.begin() as conn:
                wanted = self._screen(conn, claimed, result)
                jobs = self._jobs(conn, wanted, leased_at, result)
            run.batched = len(jobs) < len(wanted)
            pending.extend(jobs)
        return result.full and not result.paused

    def _start(self, pending: deque[_Job], run: _Run, in_progress: int) -> int:
        """Start the queued jobs there is room for; how many started. Room: a free place
        (:class:`.AdaptiveConcurrency`), and fewer than :data:`UNRECORDED_MAX` × its number
        of sends started but not recorded yet."""
        started = 0
        queued = False
        while pending and not run.halted() and not self.stopping.is_set():
            if not self._concurrency.has_room() or (
                in_progress + started >= UNRECORDED_MAX * self._concurrency.limit
            ):
                queued = True  # the rest wait: the concurrency holds them back
                break
            job = pending.popleft()
            job.ticket = self._concurrency.take()
            job.queued = job.queued or queued
            self._executor().submit(self._send_and_report, job, run)
            started += 1
        for job in pending:
            job.queued = job.queued or queued
        return started

    def _send_and_report(self, job: _Job, run: _Run) -> None:
        """One job's send on a pool thread; its outcome goes to the loop, whatever happens."""
        sent: policy.Result | None = None
        try:
            sent = self._send(job, run)
        except Exception as exc:  # one job's failure must not strand the others in flight
            log.exception("sending event %d failed", job.rows[0].id)
            sent = policy.Result(None, f"{type(exc).__name__}: {exc}"[:ERROR_MAX])
        finally:
            try:
                self._concurrency.answered(
                    job.ticket,
                    queued=job.queued,
                    slack=self._slack(job),
                    throttled=sent is not None and sent.status == 429,
                )
            finally:
                self._concurrency.give_back()
                run.done.put((job, sent))

    def _record(self, run: _Run, result: DispatchResult, wait: bool = True) -> int:
        """Wait for finished sends (with ``wait``, else only look) and record every one that has
        finished, in one transaction; how many were recorded (0 when none finished within
        :data:`RESULT_WAIT`)."""
        try:
            group = [run.done.get(timeout=RESULT_WAIT) if wait else run.done.get_nowait()]
        except queue.Empty:
            return 0
        while True:
            try:
                group.append(run.done.get_nowait())
            except queue.Empty:
                break
        self._settle_group(group, result, run)
        run.successors = run.successors or any(
            row.subject_id is not None for job, _ in group for row in job.rows
        )
        return len(group)

    def _slack(self, job: _Job) -> bool:
        """Whether the account's rate of the job's family had room since its turn that this
        process left unused (:meth:`.AccountLimiter.room`): the rate limit was not what held
        sends back."""
        if job.room_before is None:
            return False
        family = family_of(job.rows[0].api_path)
        return self._transport.limiter.room(family) > job.room_before

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
        self, conn: Connection, sent: policy.Result | None, run: _Run, now: datetime
    ) -> bool:
        """Count one finished send toward the circuit rule; True while the circuit holds its
        rows (they spend no attempt). The send that trips the rule opens the circuit for every
        process and gives the streak's earlier rows their attempt back."""
        if sent is None:
            return run.circuit.is_set()
        delivery = self._settings.delivery
        with self._circuit_lock:
            self._streak = policy.streak_after(self._streak, sent)
            if not policy.unreachable(sent):
                self._streak_rows.clear()
                answered = True
            elif run.probing or run.circuit.is_set():
                return True
            elif pause.circuit(conn) is not None:  # another process opened it meanwhile
                run.circuit.set()
                return True
            elif not policy.circuit_trips(self._streak, delivery):
                return False
            else:
                answered = False
                run.circuit.set()
                forgiven = outbox.forgive(conn, self._streak_rows)
                self._streak_rows.clear()
        if answered:
            if run.probing:
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
        """One request per event; rows of a batched endpoint (Orders API, past events) go
        together, per path (:meth:`_batched`).

        A row whose request cannot be built (its stored body is no longer valid) is dead with
        the reason, and the others go on without it.
        """
        jobs = []
        batched: dict[str, list[tuple[outbox.Claimed, dict[str, Any]]]] = {}
        for row in rows:
            try:
                if row.event_type_key == ERASURE_TYPE:
                    jobs.append(_Job([row], b"", leased_at, query=stored_query(row.body)))
                elif batch_key(row.api_path) is not None:
                    batched.setdefault(row.api_path, []).append((row, _element(row)))
                else:
                    jobs.append(_Job([row], row.body.encode("utf-8"), leased_at))
            except (ValueError, TypeError) as exc:  # UnicodeError and JSON errors included
                self._unsendable(conn, row, exc, result)
        for members in batched.values():
            jobs += self._batched(conn, members, leased_at, result)
        return jobs

    def _batched(
        self,
        conn: Connection,
        members: list[tuple[outbox.Claimed, dict[str, Any]]],
        leased_at: float,
        result: DispatchResult,
    ) -> list[_Job]:
        """Rows of one batched path as requests of up to its batch size: ``{"orders": [...]}``
        up to ``orders.api_batch``, ``{"events": [...]}`` up to ``backfill.events_batch``. A
        row whose element cannot be encoded is dead; the others go without it."""
        key = batch_key(members[0][0].api_path)
        assert key is not None
        settings = self._settings
        size = settings.orders.api_batch if key == "orders" else settings.backfill.events_batch
        jobs = []
        for i in range(0, len(members), size):
            chunk = members[i : i + size]
            try:
                body = encode_body({key: [element for _, element in chunk]})
            except (ValueError, TypeError):
                good = []
                for row, element in chunk:  # find the elements that cannot be encoded
                    try:
                        encode_body({key: [element]})
                    except (ValueError, TypeError) as exc:
                        self._unsendable(conn, row, exc, result)
                    else:
                        good.append((row, element))
                if not good:
                    continue
                chunk = good
                body = encode_body({key: [element for _, element in chunk]})
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
            result.paused = not self.stopping.is_set()
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
                step_of(row.dedupe_key) if row.subject_type in REMINDER_SUBJECTS else None,
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

    def _send(self, job: _Job, run: _Run) -> policy.Result | None:
        """Send one job's request at its turn; None when it is not tried (shutdown, bad key,
        open circuit, lost lease, no turn at the rate limit)."""
        if self.stopping.is_set() or run.halted():
            return None
        try:
            if not self._keep_lease(job):
                return None
        except Exception:  # not sent: the row goes back with no attempt spent
            log.exception("event %d: its lease could not be renewed", job.rows[0].id)
            return None
        api_path = job.rows[0].api_path
        try:
            waited = self._transport.wait_turn(api_path, self.stopping)
        except Exception:  # not sent either
            log.exception("event %d: no turn could be taken at the rate limit", job.rows[0].id)
            return None
        if waited is None or run.halted():
            return None
        job.room_before = self._transport.limiter.room(family_of(api_path))
        if job.query is not None:
            sent = metrics.timed_send(self._transport.delete, api_path, job.query)
        else:
            sent = metrics.timed_send(self._transport.post, api_path, job.body)
        if policy.classify(sent.status) is policy.Outcome.AUTH:
            run.refused.set()  # nothing more starts until the key is checked
            verdict = run.key_verdict(
                lambda: policy.key_verdict(self._transport.check_key(self.stopping))
            )
            if verdict is True:  # the key is good: the platform refused this event only
                run.refused.clear()
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

    def _settle_group(self, group: list[Finished], result: DispatchResult, run: _Run) -> None:
        """Record finished sends in one transaction, in the order they finished: the rows
        delivered together at the end (one statement per response status), every other row on
        its own as its send is counted toward the circuit (a send that trips it gives the
        attempts of the streak's rows, settled before it, back); a row that cannot be recorded
        is left to its lease and takes no other row with it."""
        delivery = self._settings.delivery
        erased = False
        delivered: list[_Decided] = []
        with self._engine.begin() as conn:
            for job, sent in group:
                held = self._circuit_step(conn, sent, run, self._clock())
                for row in job.rows:
                    if row.id in job.lost:
                        result.count(Settled.LOST_LEASE)
                        continue
                    now = self._clock()
                    decision = policy.decide(sent, row, delivery, now, circuit_open=held)
                    if (
                        isinstance(decision, policy.Sent)
                        and row.event_type_key != ERASURE_TYPE
                        and not self._pause_seen
                    ):
                        delivered.append((row, decision, now, sent))
                    else:
                        erased |= self._settle_one(conn, (row, decision, now, sent), result)
            for entry in self._settle_delivered(conn, delivered, result):
                erased |= self._settle_one(conn, entry, result)
        if erased:
            self._clear_wal()

    def _settle_one(self, conn: Connection, entry: _Decided, result: DispatchResult) -> bool:
        """Record one row's outcome in a savepoint of its own; whether it was a delivered
        erasure."""
        row, decision, now, sent = entry
        try:
            with conn.begin_nested():
                settled = self._apply(conn, row, decision, now)
                if settled is Settled.RETRIED and sent and policy.unreachable(sent):
                    with self._circuit_lock:
                        self._streak_rows.append(row.id)
                result.count(metrics.settled(row.event_type_key, settled))
                return settled is Settled.SENT and row.event_type_key == ERASURE_TYPE
        except Exception:
            log.exception(
                "event %d (%s): its result could not be recorded; it goes again once its "
                "lease runs out",
                row.id,
                row.event_type_key,
            )
            return False

    def _settle_delivered(
        self, conn: Connection, delivered: list[_Decided], result: DispatchResult
    ) -> list[_Decided]:
        """Settle delivered rows together, one statement per response status; those of a
        statement that failed are returned, to be recorded row by row."""
        together: dict[int | None, list[_Decided]] = {}
        for entry in delivered:
            decision = entry[1]
            assert isinstance(decision, policy.Sent)
            together.setdefault(decision.status, []).append(entry)
        rest: list[_Decided] = []
        for status, entries in together.items():
            claimed = [entry[0] for entry in entries]
            try:
                with conn.begin_nested():
                    done = outbox.settle_sent(
                        conn, claimed, sent_at=entries[-1][2], response_status=status
                    )
                    for row, _, now, _ in entries:
                        if row.id in done and row.subject_type in REMINDER_SUBJECTS:
                            reminders.delivered(conn, row.dedupe_key, now)
            except Exception:
                log.exception("%d delivered events could not be recorded together", len(entries))
                rest += entries
                continue
            for row in claimed:
                settled = Settled.SENT if row.id in done else Settled.LOST_LEASE
                result.count(metrics.settled(row.event_type_key, settled))
        return rest

    def _clear_wal(self) -> None:
        """After a delivered erasure was redacted: on SQLite, checkpoint the WAL so that the
        row's old bytes leave the ``-wal`` file too (a few short attempts, not to hold up
        delivery; the next erasure's checkpoint finishes what this one could not)."""
        try:
            if not checkpoint(self._engine, attempts=CHECKPOINT_ATTEMPTS):
                log.info("the WAL could not be checkpointed after a contact erasure (readers)")
        except Exception:
            log.exception("the WAL could not be checkpointed after a contact erasure")

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
                # a delivered erasure keeps no trace of the address it erased
                redacted = REDACTED_ROW if row.event_type_key == ERASURE_TYPE else {}
                done = outbox.settle(
                    conn,
                    row,
                    OutboxStatus.SENT,
                    attempts=attempts,
                    sent_at=now,
                    response_status=status,
                    last_error=None,
                    **redacted,
                )
                if done and row.subject_type in REMINDER_SUBJECTS:
                    reminders.delivered(conn, row.dedupe_key, now)
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


_Decided = tuple[outbox.Claimed, policy.Decision, datetime, policy.Result | None]
"""A finished row, what the policy decided for it, when, and the send's result."""

BATCHED = {"orders": "orders", "past_events": "events"}
"""Endpoints that take many rows in one request (by the path's last part: ``v1/orders``,
``v2/past_events``), and the key of the request's list."""


def batch_key(api_path: str) -> str | None:
    """The list key of a batched endpoint's request (``"orders"``, ``"events"``), or None for
    an endpoint that takes one event a request."""
    return BATCHED.get(api_path.strip("/").rsplit("/", 1)[-1])


def _element(row: outbox.Claimed) -> dict[str, Any]:
    """A batched row's element as stored (an order, a past event): a JSON object, else
    ``ValueError``."""
    element = json.loads(row.body)
    if not isinstance(element, dict):
        raise ValueError(f"an element of a batch is a JSON object, got {type(element).__name__}")
    return element

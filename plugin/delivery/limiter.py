"""The account's rate limits: requests spaced per endpoint family, for the whole account.

The platform counts requests per account and per family of endpoints (Generate event; orders,
contacts and every other method together; past events), and answers 429 above each family's
rate. A :class:`Schedule` hands out runs of consecutive send slots: :class:`SharedSchedule`
takes them from the database, so every process and host on it shares one schedule (one
statement per run of :data:`RUN_SECONDS`, not one per event); :class:`LocalSchedule` keeps
them in this process, for a transport without a database.

A slot is used at its time or not at all: a sender that wakes more than :data:`LATE` after its
slot drops it and takes the next, so requests that fell behind never go out in a burst. Real
elapsed time, not the plugin's clock: the limiter throttles the wire, which tests never fake.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import deque
from enum import StrEnum
from typing import Protocol

from sqlalchemy import Engine

from ..config import ApiSettings
from ..storage import rate


class Family(StrEnum):
    """Endpoints that share one rate limit of the account."""

    EVENTS = "events"
    """Generate event (v1 or v2)."""
    ORDERS = "orders"
    """Orders, contacts and every other method."""
    PAST_EVENTS = "past_events"
    """Past events (backfill)."""


def family_of(api_path: str) -> Family:
    """The family of an API path such as ``"v1/event"`` or ``"v1/orders"``."""
    last = api_path.strip("/").rsplit("/", 1)[-1]
    if last == "event":
        return Family.EVENTS
    if last == "past_events":
        return Family.PAST_EVENTS
    return Family.ORDERS


def rate_of(api: ApiSettings, family: Family) -> float:
    """Requests per second the account allows ``family`` (its ``api.*rate_limit`` setting)."""
    match family:
        case Family.EVENTS:
            return api.rate_limit
        case Family.ORDERS:
            return api.orders_rate_limit
        case Family.PAST_EVENTS:
            return api.past_events_rate_limit


RUN_SECONDS = 0.1
"""The most of a family's schedule a process takes at once: at 350/s, 35 slots per statement.
It takes fewer when few of its senders are waiting (twice their number, at least a quarter of
the most): slots taken and not used are lost to every other process."""
LATE = 0.02
"""How long after its time a slot may still be used. In any one second the requests of a
family are then at most its rate × (1 + LATE), plus one."""


def _monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Schedule(Protocol):
    """Where runs of send slots come from."""

    def reserve(self, family: Family, span: float) -> float:
        """Take the next ``span`` seconds of ``family``'s schedule; when they start, on this
        host's monotonic clock."""

    def hold(self, family: Family, seconds: float) -> None:
        """Hand out nothing of ``family`` for ``seconds`` from now, to any sender."""


class LocalSchedule:
    """Slots for the senders of this process only."""

    def __init__(self) -> None:
        self._next: dict[Family, float] = {}
        self._lock = threading.Lock()

    def reserve(self, family: Family, span: float) -> float:
        """See :meth:`Schedule.reserve`."""
        with self._lock:
            start = max(self._next.get(family, 0.0), _monotonic())
            self._next[family] = start + span
            return start

    def hold(self, family: Family, seconds: float) -> None:
        """See :meth:`Schedule.hold`."""
        with self._lock:
            until = _monotonic() + seconds
            self._next[family] = max(self._next.get(family, 0.0), until)


OFFSETS_KEPT = 64
"""Readings of the database's clock the offset to this host's is taken from (the last ones)."""


class SharedSchedule:
    """Slots shared by every process and host on one database (:mod:`..storage.rate`).

    The database's clock is the common one. Each reservation also reads it, and the moment the
    answer arrives gives one reading of the offset to this host's monotonic clock: too small
    by however late the answer was seen (the network, a thread waiting its turn), never too
    large. The largest of the recent readings is the offset used, so the runs of processes
    that saw their answers late by different amounts still follow each other, not overlap.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._offsets: deque[float] = deque(maxlen=OFFSETS_KEPT)
        self._lock = threading.Lock()

    def reserve(self, family: Family, span: float) -> float:
        """See :meth:`Schedule.reserve`."""
        with self._engine.begin() as conn:
            run = rate.reserve(conn, family.value, span)
            seen = _monotonic()
        with self._lock:
            self._offsets.append(run.now - seen)
            offset = max(self._offsets)
        return run.start - offset

    def hold(self, family: Family, seconds: float) -> None:
        """See :meth:`Schedule.hold`."""
        with self._engine.begin() as conn:
            rate.hold(conn, family.value, seconds)


class _Lane:
    """One family's slots in this process: the run taken last, used in order."""

    def __init__(self, family: Family, per_second: float, schedule: Schedule) -> None:
        self._family = family
        self.interval = 1.0 / per_second
        self._size = max(1, math.ceil(per_second * RUN_SECONDS))
        self._schedule = schedule
        self._start = 0.0
        self._count = 0
        self._taken = 0
        self._held_until = 0.0
        self._reserving = False
        self._waiting = 0
        """Senders of this process inside :meth:`acquire` now."""
        self._cond = threading.Condition()
        self.room = 0
        """Signs that this process's senders, not the rate, held it back (see
        :mod:`.concurrency`): a run it took started at once (the account's schedule had room),
        or a slot of a run it took passed while none of its senders was waiting for one. Slots
        that pass while senders wait (they woke late on a busy host) are no such sign: more
        senders would only make the host busier."""

    def after_fork(self) -> None:
        """In a forked child: no thread of the parent waits here, and none holds the lock."""
        self._cond = threading.Condition()
        self._reserving = False
        self._waiting = 0

    def acquire(self, stop: threading.Event) -> float | None:
        """Wait for a slot; the seconds waited, or None when ``stop`` came first."""
        with self._cond:
            self._waiting += 1
        try:
            return self._acquire(stop)
        finally:
            with self._cond:
                self._waiting -= 1

    @property
    def waiting(self) -> int:
        """Senders of this process inside :meth:`acquire` now."""
        return self._waiting

    def _acquire(self, stop: threading.Event) -> float | None:
        began = _monotonic()
        late = False
        while True:
            slot = self._next_slot(stop, fresh=not late)
            if slot is None:
                return None
            delay = slot - _monotonic()
            if delay > 0 and stop.wait(delay):
                return None
            if self._held_until > slot:
                continue  # a 429 came while this caller waited: its slot is void
            if _monotonic() <= slot + LATE:
                return _monotonic() - began
            # woke too late for this slot (a busy host): it is dropped, not used in a burst
            late = True

    def _next_slot(self, stop: threading.Event, fresh: bool) -> float | None:
        """Take the next slot of this process's run, reserving another run when it is used up.

        ``fresh``: the caller did not just wake too late for a slot; slots it finds passed
        unused are then room (:attr:`room`) when no other sender of this process waits.
        """
        while True:
            with self._cond:
                while True:
                    now = _monotonic()
                    if self._held_until > now:
                        wait = self._held_until - now
                        break
                    while self._taken < self._count and self._slot(self._taken) < now - LATE:
                        self._taken += 1  # nobody asked in time
                        if fresh and self._waiting == 1:
                            self.room += 1
                    if self._taken < self._count:
                        self._taken += 1
                        return self._slot(self._taken - 1)
                    if not self._reserving:
                        self._reserving = True
                        wait = 0.0
                        break
                    self._cond.wait(1.0)  # another thread reserves the next run
            if wait > 0:
                if stop.wait(wait):
                    return None
                continue
            start = None
            with self._cond:
                size = min(self._size, max(self._size // 4, 2 * self._waiting, 1))
            try:
                start = self._schedule.reserve(self._family, size * self.interval)
            finally:
                with self._cond:
                    if start is not None:
                        self._start, self._count, self._taken = start, size, 0
                        if start <= _monotonic() + LATE:
                            self.room += 1
                    self._reserving = False
                    self._cond.notify_all()

    def _slot(self, index: int) -> float:
        return self._start + index * self.interval

    def hold(self, seconds: float) -> None:
        """No slot of this process for ``seconds``; the run in hand is dropped."""
        with self._cond:
            self._held_until = max(self._held_until, _monotonic() + seconds)
            self._taken = self._count


class AccountLimiter:
    """Spaces this process's requests to the account's limits, family by family (thread-safe)."""

    def __init__(self, api: ApiSettings, schedule: Schedule | None = None) -> None:
        self._schedule: Schedule = schedule or LocalSchedule()
        self._lanes = {
            family: _Lane(family, rate_of(api, family), self._schedule) for family in Family
        }
        ref = weakref.ref(self)

        def after_fork() -> None:
            limiter = ref()
            if limiter is not None:
                for lane in limiter._lanes.values():
                    lane.after_fork()

        os.register_at_fork(after_in_child=after_fork)

    def acquire(self, family: Family, stop: threading.Event | None = None) -> float | None:
        """Wait for one request's slot in ``family``; the seconds waited, or None when ``stop``
        came first."""
        return self._lanes[family].acquire(stop or threading.Event())

    def interval(self, family: Family) -> float:
        """Seconds between two slots of ``family``."""
        return self._lanes[family].interval

    def waiting(self, family: Family) -> int:
        """How many senders of this process wait for a slot of ``family`` now."""
        return self._lanes[family].waiting

    def room(self, family: Family) -> int:
        """How often so far ``family``'s rate had room this process did not use: a run it took
        started at once, or a slot it took passed with none of its senders asking. With
        several processes their runs keep the schedule ahead, and the slots one of them
        leaves unused are then the sign that it has too few senders."""
        return self._lanes[family].room

    def hold(self, family: Family, seconds: float) -> None:
        """No request of ``family`` for ``seconds``, in any process sharing the schedule (the
        platform answered 429)."""
        self._lanes[family].hold(seconds)
        self._schedule.hold(family, seconds)

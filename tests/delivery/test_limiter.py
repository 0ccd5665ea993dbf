"""The account's rate limits: slots per endpoint family, local or shared through the database.

The lanes run in virtual time (:class:`VirtualTime` patched in as the limiter's clock); the
shared schedule against a real database, in real time, where only the order of the runs the
database hands out is asserted.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from shop_events.config import ApiSettings, DatabaseSettings
from shop_events.delivery import limiter
from shop_events.delivery.limiter import (
    LATE,
    RUN_SECONDS,
    AccountLimiter,
    Family,
    LocalSchedule,
    SharedSchedule,
    family_of,
)
from shop_events.storage import rate
from shop_events.storage.engines import make_engine
from sqlalchemy import Engine

from tests.support import VirtualTime, wait_until


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """The limiter's monotonic clock, moved only by the waits it asks for."""
    made = VirtualTime()
    monkeypatch.setattr(limiter, "_monotonic", made)
    return made


def account(events: float = 350.0, orders: float = 200.0, past: float = 100.0) -> ApiSettings:
    return ApiSettings(rate_limit=events, orders_rate_limit=orders, past_events_rate_limit=past)


def most_in_one_second(times: list[float]) -> int:
    """The largest number of ``times`` inside any one-second window."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


# --------------------------------------------------------------------------------- families


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("v1/event", Family.EVENTS),
        ("v2/event", Family.EVENTS),
        ("/v1/event/", Family.EVENTS),
        ("v1/orders", Family.ORDERS),
        ("v1/contacts", Family.ORDERS),
        ("v1/account/info", Family.ORDERS),
        ("v1/past_events", Family.PAST_EVENTS),
        ("v2/past_events", Family.PAST_EVENTS),
    ],
)
def test_each_path_counts_against_its_family(path: str, family: Family) -> None:
    assert family_of(path) is family


def test_each_family_has_its_own_rate(clock: VirtualTime) -> None:
    limits = AccountLimiter(account(events=100.0, orders=50.0, past=10.0))
    assert limits.interval(Family.EVENTS) == pytest.approx(0.01)
    assert limits.interval(Family.ORDERS) == pytest.approx(0.02)
    assert limits.interval(Family.PAST_EVENTS) == pytest.approx(0.1)
    clock.frozen = True
    for _ in range(3):
        limits.acquire(Family.EVENTS, clock)
    limits.acquire(Family.ORDERS, clock)  # not behind the events: its first slot is free
    assert clock.waits == pytest.approx([0.01, 0.02])


# ------------------------------------------------------------------------- one process' lane


def test_calls_are_spaced_at_the_rate(clock: VirtualTime) -> None:
    limits = AccountLimiter(account(events=200.0))  # one slot every 5 ms
    start = clock()
    for _ in range(50):  # more than one run of slots
        limits.acquire(Family.EVENTS, clock)
    # the first call is free, the others wait their turn
    assert clock.waits == pytest.approx([0.005] * 49)
    assert clock() - start == pytest.approx(49 * 0.005)


def test_threads_share_the_slots(clock: VirtualTime) -> None:
    clock.frozen = True  # every caller asks at the same instant: each must get its own slot
    limits = AccountLimiter(account(events=200.0))
    threads = [
        threading.Thread(target=lambda: [limits.acquire(Family.EVENTS, clock) for _ in range(5)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert sorted(clock.waits) == pytest.approx([0.005 * k for k in range(1, 20)])


def test_a_stop_ends_the_wait(clock: VirtualTime) -> None:
    limits = AccountLimiter(account(events=0.1))  # one slot every 10 s
    assert limits.acquire(Family.EVENTS, clock) == 0.0
    clock.stopped = True
    start = clock()
    assert limits.acquire(Family.EVENTS, clock) is None
    assert clock.waits == [pytest.approx(10.0)]  # it waited on the stop event, which was set
    assert clock() == start


def test_a_hold_stops_every_caller_including_those_already_waiting(clock: VirtualTime) -> None:
    limits = AccountLimiter(account(events=2.0))  # a slot every 0.5 s
    start = clock()
    passed: list[float] = []
    limits.acquire(Family.EVENTS, clock)  # the first slot is free
    passed.append(clock() - start)
    # the next caller waits for its slot at 0.5 s; meanwhile a 429 says: nothing for a second
    clock.on_wait = lambda: limits.hold(Family.EVENTS, 1.0)
    limits.acquire(Family.EVENTS, clock)
    passed.append(clock() - start)
    limits.acquire(Family.EVENTS, clock)  # the next one keeps its spacing behind it
    passed.append(clock() - start)
    assert passed == pytest.approx([0.0, 1.0, 1.5])


class BusyHost(VirtualTime):
    """Every wait ends late by a random amount, as on a loaded host."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def wait(self, seconds: float | None = None) -> bool:
        stopped = super().wait(seconds)
        self.advance(self._rng.choice([0.0, 0.0, 0.001, 0.03, 0.2]))
        return stopped


@pytest.mark.parametrize("seed", range(5))
def test_late_callers_never_burst(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    host = BusyHost(seed)
    monkeypatch.setattr(limiter, "_monotonic", host)
    limits = AccountLimiter(account(events=100.0))
    passed = []
    for _ in range(600):
        assert limits.acquire(Family.EVENTS, host) is not None
        passed.append(host())
    # a slot found too late is dropped: in no second more than the rate and its tolerance
    assert most_in_one_second(passed) <= 100 * (1 + LATE) + 1
    assert passed == sorted(passed)


class Recording(LocalSchedule):
    """A local schedule that notes the span of every run it hands out, and holds the runs
    back while :attr:`gate` is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[float] = []
        self.gate = threading.Event()
        self.gate.set()

    def reserve(self, family: Family, span: float) -> float:
        self.gate.wait(10)
        self.spans.append(span)
        return super().reserve(family, span)


def test_a_lone_sender_takes_a_small_run_and_many_take_a_full_one(clock: VirtualTime) -> None:
    schedule = Recording()
    limits = AccountLimiter(account(events=350.0), schedule)
    limits.acquire(Family.EVENTS, clock)
    smallest = math.ceil(350 * RUN_SECONDS) // 4
    assert schedule.spans == [pytest.approx(smallest / 350.0)]  # slots nobody would use: not taken
    clock.frozen = True
    schedule.gate.clear()  # the next run is held back until the senders all wait for it
    threads = [
        threading.Thread(target=limits.acquire, args=(Family.EVENTS, clock)) for _ in range(60)
    ]
    for thread in threads:
        thread.start()
    left = smallest - 1  # the first run's other slots: taken at once
    assert wait_until(lambda: limits.waiting(Family.EVENTS) == 60 - left, 10)
    schedule.gate.set()
    for thread in threads:
        thread.join(timeout=10)
    assert limits.waiting(Family.EVENTS) == 0
    assert max(schedule.spans) == pytest.approx(math.ceil(350 * RUN_SECONDS) / 350.0)


class Ahead(LocalSchedule):
    """A schedule that other processes keep one second ahead: no run starts at once."""

    def reserve(self, family: Family, span: float) -> float:
        return super().reserve(family, span) + 1.0


def test_room_is_a_run_that_starts_at_once_or_a_slot_of_ones_own_left_unused(
    clock: VirtualTime,
) -> None:
    free = AccountLimiter(account(events=100.0), LocalSchedule())
    free.acquire(Family.EVENTS, clock)
    assert free.room(Family.EVENTS) == 1  # the schedule had room: the run started at once

    busy = AccountLimiter(account(events=100.0), Ahead())
    run = math.ceil(100 * RUN_SECONDS) // 4  # a lone sender's run
    for _ in range(3 * run + 1):  # one sender using every slot, each at its time
        busy.acquire(Family.EVENTS, clock)
    assert busy.room(Family.EVENTS) == 0  # the rate, not the senders, held it back

    clock.advance(1.0)  # nobody asks while the rest of the fourth run passes
    busy.acquire(Family.EVENTS, clock)
    assert busy.room(Family.EVENTS) == run - 1  # its own slots went unused: too few senders


def test_slots_passed_while_a_sender_woke_late_are_no_room(clock: VirtualTime) -> None:
    busy = AccountLimiter(account(events=400.0), Ahead())
    busy.acquire(Family.EVENTS, clock)  # the first of a lone sender's run of 10, a second ahead
    assert busy.room(Family.EVENTS) == 0
    clock.on_wait = lambda: clock.advance(1.0)  # the host stalls while it waits for the second
    busy.acquire(Family.EVENTS, clock)
    assert busy.room(Family.EVENTS) == 0  # the other 9 slots passed while it slept late


# --------------------------------------------------------------------- the shared schedule


def engine_for(url: str) -> Engine:
    return make_engine(DatabaseSettings(url=url))


@pytest.fixture
def engines(database_url: str) -> Iterator[list[Engine]]:
    """Four engines on one database, as four processes would have."""
    made = [engine_for(database_url) for _ in range(4)]
    yield made
    for engine in made:
        engine.dispose()


def test_runs_handed_to_several_senders_never_overlap(engines: list[Engine]) -> None:
    runs: list[tuple[float, float]] = []
    lock = threading.Lock()
    span = 0.1

    def sender(engine: Engine) -> None:
        for _ in range(25):
            with engine.begin() as conn:
                run = rate.reserve(conn, "events", span)
            assert run.start >= run.now - 1e-6  # never a slot in the past
            with lock:
                runs.append((run.start, run.start + span))

    threads = [threading.Thread(target=sender, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    runs.sort()
    assert len(runs) == 100
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert start >= end - 1e-6


def test_families_have_separate_schedules(engines: list[Engine]) -> None:
    with engines[0].begin() as conn:
        rate.reserve(conn, "events", 30.0)
        orders = rate.reserve(conn, "orders", 0.1)
    assert orders.start == pytest.approx(orders.now, abs=0.01)


def test_a_hold_is_seen_by_every_sender(engines: list[Engine]) -> None:
    first, second = (SharedSchedule(engine) for engine in engines[:2])
    start = first.reserve(Family.EVENTS, 0.01)
    first.hold(Family.EVENTS, 5.0)
    later = second.reserve(Family.EVENTS, 0.01)
    assert later - start >= 4.9  # on this host's clock: after the hold, whoever asks


def test_a_schedule_far_ahead_stalls_no_longer_than_the_horizon(engines: list[Engine]) -> None:
    with engines[0].begin() as conn:
        rate.reserve(conn, "events", 1e9)  # a clock that stepped back, say
        run = rate.reserve(conn, "events", 0.1)
    assert run.start - run.now == pytest.approx(rate.HORIZON, abs=1.0)


def test_shared_limiter_spaces_senders_of_two_processes(
    engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two limiters on one database (two processes) take slots from one schedule: together
    they never get more than the rate's slots in any second."""
    taken: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    api = account(events=200.0)

    def process(engine: Engine, count: int) -> None:
        limits = AccountLimiter(api, SharedSchedule(engine))
        for _ in range(count):
            assert limits.acquire(Family.EVENTS, stop) is not None
            with lock:
                taken.append(limiter._monotonic())

    threads = [
        threading.Thread(target=process, args=(engine, 150), kwargs={}) for engine in engines[:2]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(taken) == 300
    assert most_in_one_second(taken) <= 200 * (1 + LATE) + 2


def test_local_schedule_continues_where_it_stopped(clock: VirtualTime) -> None:
    schedule = LocalSchedule()
    first = schedule.reserve(Family.EVENTS, 0.1)
    second = schedule.reserve(Family.EVENTS, 0.1)
    other: Any = schedule.reserve(Family.ORDERS, 0.1)
    assert (first, second, other) == pytest.approx((clock(), clock() + 0.1, clock()))

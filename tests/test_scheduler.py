"""The in-process scheduler: starts once, stops, and restarts lazily in a forked child."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import freezegun
import pytest
from shop_events.config import SchedulerSettings
from shop_events.scheduler import THREAD_PREFIX, Scheduler

from tests.support import wait_until

WAIT = 10.0
"""Upper bound for a job thread to run once; they start at once, so this is never reached."""
STOP = 20.0
"""How long a process gets to exit."""


def scan_threads() -> list[threading.Thread]:
    """One per scheduler running its jobs (each job has its own thread)."""
    return [t for t in threading.enumerate() if t.name == f"{THREAD_PREFIX}-scan"]


class Jobs:
    """Counting stand-ins for scan and dispatch, with events to wait on."""

    def __init__(self) -> None:
        self.scans = 0
        self.dispatches = 0
        self.scanned = threading.Event()
        self.dispatched = threading.Event()

    def scan(self) -> None:
        self.scans += 1
        self.scanned.set()

    def dispatch(self) -> None:
        self.dispatches += 1
        self.dispatched.set()


# Long intervals: each job runs once at start, and never again during a test.
SETTINGS = SchedulerSettings(scan_interval=timedelta(hours=1), dispatch_interval=timedelta(hours=1))


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def scheduler(jobs: Jobs) -> Iterator[Scheduler]:
    made = Scheduler(SETTINGS, jobs.scan, jobs.dispatch)
    yield made
    made.shutdown()


def test_starts_lazily(scheduler: Scheduler, jobs: Jobs) -> None:
    """No thread and no job until ``start()``; ``ensure_running()``, which every capture calls,
    does not start a scheduler that was never started."""
    before = len(scan_threads())
    scheduler.ensure_running()
    assert not scheduler.running
    assert len(scan_threads()) == before
    assert (jobs.scans, jobs.dispatches) == (0, 0)
    scheduler.start()
    assert scheduler.running
    assert jobs.scanned.wait(WAIT)
    assert jobs.dispatched.wait(WAIT)
    assert len(scan_threads()) == before + 1


def test_start_twice_starts_once(scheduler: Scheduler, jobs: Jobs) -> None:
    before = len(scan_threads())
    scheduler.start()
    scheduler.start()
    scheduler.ensure_running()
    assert scheduler.running
    assert jobs.scanned.wait(WAIT)
    assert jobs.dispatched.wait(WAIT)
    assert len(scan_threads()) == before + 1


def test_start_from_many_threads_starts_once(scheduler: Scheduler, jobs: Jobs) -> None:
    before = len(scan_threads())
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait(WAIT)
        scheduler.start()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert scheduler.running
    assert jobs.scanned.wait(WAIT)
    assert len(scan_threads()) == before + 1


def test_shutdown_stops(scheduler: Scheduler, jobs: Jobs) -> None:
    before = len(scan_threads())
    scheduler.start()
    assert jobs.scanned.wait(WAIT)
    scheduler.shutdown()
    assert not scheduler.running
    assert len(scan_threads()) == before
    scheduler.ensure_running()  # shut down on purpose: not revived
    assert not scheduler.running
    scheduler.shutdown()  # twice is fine
    scheduler.start()  # and it can start again
    assert scheduler.running


def test_failing_job_is_logged_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    failed = threading.Event()

    def boom() -> None:
        try:
            raise RuntimeError("database is down")
        finally:
            failed.set()

    ran = threading.Event()
    scheduler = Scheduler(SETTINGS, boom, ran.set)
    try:
        with caplog.at_level(logging.ERROR, logger="shop_events.scheduler"):
            scheduler.start()
            assert failed.wait(WAIT)
            assert ran.wait(WAIT)
            # the job's wrapper logs after the job raises; shutdown waits for it to finish
            scheduler.shutdown(wait=True)
        assert "scan job failed" in caplog.text
        assert "database is down" in caplog.text
    finally:
        scheduler.shutdown()


def test_after_fork_the_child_restarts_its_own(scheduler: Scheduler, jobs: Jobs) -> None:
    scheduler.start()
    assert jobs.scanned.wait(WAIT)
    parent_pid = os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, leave with os._exit
        code = 1
        try:
            os.close(read_end)
            report: dict[str, object] = {
                "pid": os.getpid(),
                "running_after_fork": scheduler.running,
                "threads_after_fork": len(scan_threads()),
            }
            jobs.scanned.clear()
            scheduler.ensure_running()
            report["running_after_ensure"] = scheduler.running
            report["job_ran_in_child"] = jobs.scanned.wait(WAIT)
            report["threads_after_ensure"] = len(scan_threads())
            scheduler.ensure_running()  # a second call does not start another
            report["threads_after_second_ensure"] = len(scan_threads())
            scheduler.shutdown()
            report["running_after_shutdown"] = scheduler.running
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read_end], [], [], 2 * WAIT)
        data = os.read(read_end, 4096) if ready else b""
    finally:
        os.close(read_end)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert ready, "the child did not report in time"
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(data)
    assert report["pid"] != parent_pid
    assert report["running_after_fork"] is False
    assert report["threads_after_fork"] == 0  # fork copies no threads
    assert report["running_after_ensure"] is True
    assert report["threads_after_ensure"] == 1
    assert report["job_ran_in_child"] is True
    assert report["threads_after_second_ensure"] == 1
    assert report["running_after_shutdown"] is False
    # the parent's scheduler is untouched by the child
    assert scheduler.running
    assert os.getpid() == parent_pid


# -- the monotonic schedule -----------------------------------------------------------------------


class ManualMonotonic:
    """A monotonic clock that moves only when the test says: the job threads sleep on it."""

    def __init__(self) -> None:
        self._now = 0.0
        self._cond = threading.Condition()
        self.sleepers = 0

    def now(self) -> float:
        with self._cond:
            return self._now

    def sleep(self, stop: threading.Event, seconds: float) -> bool:
        with self._cond:
            until = self._now + seconds
            self.sleepers += 1
            try:
                while self._now < until and not stop.is_set():
                    # the stop event is not tied to this condition: look at it now and then
                    self._cond.wait(0.05)
            finally:
                self.sleepers -= 1
        return stop.is_set()

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()


class Recorder:
    """Jobs that note the wall-clock (UTC) time of each run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, list[datetime]] = {"scan": [], "dispatch": []}

    def job(self, name: str) -> Callable[[], None]:
        def run() -> None:
            with self.lock:
                self.runs[name].append(datetime.now(UTC))

        return run

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.runs[name])


def eventually(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within about :data:`WAIT` seconds. Counts its looks instead
    of reading a clock: under freezegun, ``time.monotonic`` stands still."""
    pause = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return True
        pause.wait(0.01)
    return False


def settle(clock: ManualMonotonic, recorder: Recorder, scans: int, dispatches: int) -> bool:
    """Wait until the jobs have run that often and both threads sleep again."""
    return eventually(
        lambda: (
            (recorder.count("scan"), recorder.count("dispatch"), clock.sleepers)
            == (scans, dispatches, 2)
        )
    )


def test_a_wall_clock_stepped_back_an_hour_does_not_stop_the_jobs() -> None:
    """The schedule follows the monotonic clock: after the wall clock steps back one hour the
    jobs run on at their intervals, and what they write keeps the (stepped) UTC time."""
    clock = ManualMonotonic()
    recorder = Recorder()
    settings = SchedulerSettings(
        scan_interval=timedelta(minutes=1), dispatch_interval=timedelta(seconds=5)
    )
    start = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    with freezegun.freeze_time(start) as wall:
        scheduler = Scheduler(settings, recorder.job("scan"), recorder.job("dispatch"), clock=clock)
        try:
            scheduler.start()
            assert settle(clock, recorder, 1, 1)  # both run at start
            for step in range(1, 13):  # one minute, five seconds at a time
                clock.advance(5)
                wall.tick(timedelta(seconds=5))
                assert settle(clock, recorder, 1 + step // 12, 1 + step)

            wall.move_to(start + timedelta(minutes=1) - timedelta(hours=1))  # the step back
            for step in range(1, 13):
                clock.advance(5)
                wall.tick(timedelta(seconds=5))
                assert settle(clock, recorder, 2 + step // 12, 13 + step)
        finally:
            scheduler.shutdown()
    assert recorder.count("scan") == 3
    assert recorder.count("dispatch") == 25
    dispatched = recorder.runs["dispatch"]
    assert dispatched[12] == start + timedelta(minutes=1)
    assert dispatched[13] == start + timedelta(minutes=1, seconds=5) - timedelta(hours=1)
    assert dispatched[-1] == start + timedelta(minutes=2) - timedelta(hours=1)


def test_a_run_that_overruns_its_interval_is_followed_by_one_run_not_a_burst() -> None:
    clock = ManualMonotonic()
    recorder = Recorder()
    settings = SchedulerSettings(
        scan_interval=timedelta(minutes=1), dispatch_interval=timedelta(seconds=5)
    )
    long_run = threading.Event()

    def dispatch() -> None:
        recorder.job("dispatch")()
        if recorder.count("dispatch") == 2:
            clock.advance(30)  # this run took 30 s: six intervals missed
            long_run.set()

    scheduler = Scheduler(settings, recorder.job("scan"), dispatch, clock=clock)
    try:
        scheduler.start()
        assert settle(clock, recorder, 1, 1)
        clock.advance(5)
        assert long_run.wait(WAIT)
        assert settle(clock, recorder, 1, 3)  # the run after the long one, then a sleep
        clock.advance(4.9)
        assert settle(clock, recorder, 1, 3)
        clock.advance(0.1)
        assert settle(clock, recorder, 1, 4)
    finally:
        scheduler.shutdown()


def test_no_job_runs_before_ready_says_so_which_is_asked_every_shortest_interval() -> None:
    """The tables do not exist yet: the jobs wait, asking again each dispatch interval."""
    clock = ManualMonotonic()
    recorder = Recorder()
    answers: list[bool] = []
    tables = threading.Event()

    def ready() -> bool:
        answers.append(tables.is_set())
        if len(answers) == 2:
            raise RuntimeError("the database is down for a moment")
        return tables.is_set()

    settings = SchedulerSettings(
        scan_interval=timedelta(minutes=1), dispatch_interval=timedelta(seconds=5)
    )
    scheduler = Scheduler(
        settings, recorder.job("scan"), recorder.job("dispatch"), clock=clock, ready=ready
    )
    try:
        scheduler.start()
        assert eventually(lambda: clock.sleepers == 1 and len(answers) == 1)
        for looks in (2, 3):
            clock.advance(5)
            assert eventually(lambda looks=looks: clock.sleepers == 1 and len(answers) == looks)
        assert scheduler.running and not scheduler.runs_jobs
        assert (recorder.count("scan"), recorder.count("dispatch")) == (0, 0)
        tables.set()
        clock.advance(4.9)
        assert eventually(lambda: clock.sleepers == 1) and len(answers) == 3
        clock.advance(0.1)
        assert settle(clock, recorder, 1, 1)
        assert scheduler.runs_jobs and answers == [False, False, False, True]
    finally:
        scheduler.shutdown()


# -- one job runner per SQLite file ---------------------------------------------------------------


def test_on_one_lock_file_one_scheduler_runs_the_jobs_and_the_other_takes_over(
    tmp_path: Path,
) -> None:
    """Two schedulers of one database file (here in one process: the lock is per open file,
    as between processes): the second stands by until the first stops, then runs the jobs."""
    lock_path = tmp_path / "shop_events.db.jobs.lock"
    clock = ManualMonotonic()
    first, second = Recorder(), Recorder()
    runner = Scheduler(
        SETTINGS, first.job("scan"), first.job("dispatch"), lock_path=lock_path, clock=clock
    )
    standby = Scheduler(
        SETTINGS, second.job("scan"), second.job("dispatch"), lock_path=lock_path, clock=clock
    )
    try:
        runner.start()
        assert settle(clock, first, 1, 1)
        assert runner.runs_jobs
        standby.start()
        assert eventually(lambda: clock.sleepers == 3)  # its election thread waits
        assert standby.running and not standby.runs_jobs
        assert (second.count("scan"), second.count("dispatch")) == (0, 0)
        assert lock_path.read_text().strip() == str(os.getpid())

        runner.shutdown()
        clock.advance(SETTINGS.dispatch_interval.total_seconds())  # the standby's next look
        assert settle(clock, second, 1, 1)
        assert standby.runs_jobs
        assert (first.count("scan"), first.count("dispatch")) == (1, 1)
    finally:
        runner.shutdown()
        standby.shutdown()


def _run_jobs_until_told(url: str, directory: str) -> None:
    """A shop process: its tracker's scheduler runs on the shared SQLite file until the test
    writes ``stop``; each scan it runs is noted in ``runs-<pid>``."""
    from shop_events import Settings, Tracker

    marks = Path(directory) / f"runs-{os.getpid()}"
    scan = Tracker.scan

    def noted_scan(self: Tracker) -> Any:
        with marks.open("a") as out:
            out.write(".")
        return scan(self)

    Tracker.scan = noted_scan  # type: ignore[method-assign]
    settings = Settings.load(env={}).with_keys(
        {
            "SHOP_EVENTS_DATABASE_URL": url,
            "SHOP_EVENTS_SCHEDULER_SCAN_INTERVAL": "100ms",
            "SHOP_EVENTS_SCHEDULER_DISPATCH_INTERVAL": "100ms",
        }
    )
    tracker = Tracker(settings)
    tracker.start()
    stop = Path(directory) / "stop"
    pause = threading.Event()
    deadline = time.monotonic() + 120
    while not stop.exists() and time.monotonic() < deadline:
        pause.wait(0.05)
    tracker.shutdown()


@pytest.mark.slow
def test_processes_on_one_sqlite_file_elect_one_job_runner_and_a_standby_takes_over(
    tmp_path: Path, sqlite_template: Path
) -> None:
    database = tmp_path / "shop_events.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_run_jobs_until_told, args=(url, str(tmp_path))) for _ in range(3)
    ]

    def scans() -> dict[int, int]:
        found = {}
        for process in processes:
            marks = tmp_path / f"runs-{process.pid}"
            found[process.pid] = len(marks.read_text()) if marks.exists() else 0
        return found

    try:
        for process in processes:
            process.start()
        assert wait_until(lambda: max(scans().values()) >= 5, 60)
        first = scans()
        runners = [pid for pid, n in first.items() if n]
        assert len(runners) == 1, first
        runner = next(p for p in processes if p.pid == runners[0])
        assert (database.parent / "shop_events.db.jobs.lock").read_text().strip() == str(runner.pid)

        runner.kill()  # even kill -9: the OS frees the lock
        runner.join(STOP)
        assert wait_until(lambda: sum(scans().values()) >= sum(first.values()) + 5, 60)
        second = scans()
        taken_over = [pid for pid, n in second.items() if n and pid != runner.pid]
        assert len(taken_over) == 1, second
        assert second[runner.pid] == first[runner.pid]
    finally:
        (tmp_path / "stop").write_text("")
        for process in processes:
            process.join(STOP)
            if process.is_alive():
                process.kill()
                process.join(STOP)
    assert all(p.exitcode is not None for p in processes)

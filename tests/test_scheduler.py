"""The in-process scheduler: starts once, stops, and restarts lazily in a forked child."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from shop_events.config import SchedulerSettings
from shop_events.scheduler import Scheduler

WAIT = 10.0
"""Upper bound for a job thread to run once; they start at once, so this is never reached."""


def apscheduler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "APScheduler"]


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
    before = len(apscheduler_threads())
    scheduler.ensure_running()
    assert not scheduler.running
    assert len(apscheduler_threads()) == before
    assert (jobs.scans, jobs.dispatches) == (0, 0)
    scheduler.start()
    assert scheduler.running
    assert len(apscheduler_threads()) == before + 1
    assert jobs.scanned.wait(WAIT)
    assert jobs.dispatched.wait(WAIT)


def test_start_twice_starts_once(scheduler: Scheduler, jobs: Jobs) -> None:
    before = len(apscheduler_threads())
    scheduler.start()
    scheduler.start()
    scheduler.ensure_running()
    assert scheduler.running
    assert len(apscheduler_threads()) == before + 1
    assert jobs.scanned.wait(WAIT)
    assert jobs.dispatched.wait(WAIT)


def test_start_from_many_threads_starts_once(scheduler: Scheduler) -> None:
    before = len(apscheduler_threads())
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
    assert len(apscheduler_threads()) == before + 1


def test_shutdown_stops(scheduler: Scheduler, jobs: Jobs) -> None:
    before = len(apscheduler_threads())
    scheduler.start()
    assert jobs.scanned.wait(WAIT)
    scheduler.shutdown()
    assert not scheduler.running
    assert len(apscheduler_threads()) == before
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
                "threads_after_fork": len(apscheduler_threads()),
            }
            jobs.scanned.clear()
            scheduler.ensure_running()
            report["running_after_ensure"] = scheduler.running
            report["threads_after_ensure"] = len(apscheduler_threads())
            report["job_ran_in_child"] = jobs.scanned.wait(WAIT)
            scheduler.ensure_running()  # a second call does not start another
            report["threads_after_second_ensure"] = len(apscheduler_threads())
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

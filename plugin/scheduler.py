"""The in-process jobs (scan, dispatch, retention): started lazily, rebuilt after fork.

Each job runs on its own thread, on a monotonic clock: a step of the system clock (NTP, a
daylight-saving mistake, an operator) neither stops nor bunches the jobs. The events they write
keep their UTC times from the tracker's clock; only the schedule is monotonic.

Correctness comes from the database, so on a server database every process of a shop may run
these jobs at once. On SQLite the processes of one database file elect one to run them: an OS
lock on ``<database>.jobs.lock``, held while the jobs run and freed by the OS when the process
ends, however it ends. The others stand by and try the lock again every interval, so one takes
over when the runner exits.

A pre-forking server (gunicorn ``--preload``) forks after the parent started its scheduler; the
child inherits no threads, so it starts its own on its first capture or request.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from .config import SchedulerSettings
from .storage.engines import paced

log = logging.getLogger(__name__)

THREAD_PREFIX = "shop-events-job"
"""Job threads are named ``shop-events-job-<name>``; the election thread ``…-lead``."""


class MonotonicClock(Protocol):
    """What the scheduler waits on: a monotonic ``now()`` and a stoppable ``sleep``."""

    def now(self) -> float:
        """Seconds on a clock that never steps back."""

    def sleep(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; True when stopped."""


class SystemMonotonic:
    """``time.monotonic`` and ``Event.wait``: the clock of every real process."""

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, stop: threading.Event, seconds: float) -> bool:
        """``stop.wait(seconds)``."""
        return stop.wait(seconds)


class JobsLock:
    """The OS file lock that elects the one process per SQLite file that runs the jobs.

    ``flock`` belongs to the open file: a forked child shares it until it closes its copy
    (:meth:`forget`), and the OS frees it when the holder exits, even on ``kill -9``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; never waits."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for an operator: who runs the jobs
        self._fd = fd
        return True

    def release(self) -> None:
        """Let another process take over."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def forget(self) -> None:
        """In a forked child: drop the copy of the parent's lock without releasing it."""
        self.release()  # closing one copy keeps the lock while the parent's copy is open


class Scheduler:
    """Runs ``scan`` every ``scan_interval`` and ``dispatch`` every ``dispatch_interval``
    (and any ``more`` jobs at theirs), each on its own thread, on a monotonic clock.

    With ``lock_path`` (SQLite), the jobs run only while this process holds that file lock.
    With ``ready``, they start only once it returns True (the tables exist); until then it is
    asked again every shortest interval.
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        scan: Callable[[], Any],
        dispatch: Callable[[], Any],
        more: Mapping[str, tuple[Callable[[], Any], timedelta]] | None = None,
        *,
        lock_path: Path | None = None,
        clock: MonotonicClock | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._jobs = {
            "scan": (scan, settings.scan_interval.total_seconds()),
            "dispatch": (dispatch, settings.dispatch_interval.total_seconds()),
            **{name: (job, every.total_seconds()) for name, (job, every) in (more or {}).items()},
        }
        self._clock: MonotonicClock = clock or SystemMonotonic()
        self._ready = ready
        self._jobs_lock = JobsLock(lock_path) if lock_path is not None else None
        self._stop = threading.Event()
        self._lead: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._wanted = False
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def after_fork() -> None:
            scheduler = ref()
            if scheduler is not None:
                scheduler._forget()

        os.register_at_fork(after_in_child=after_fork)

    @property
    def running(self) -> bool:
        """Whether the scheduler is started in this process (running the jobs or standing by)."""
        return self._lead is not None and self._pid == os.getpid()

    @property
    def intervals(self) -> dict[str, timedelta]:
        """Each job's name and how often it runs."""
        return {name: timedelta(seconds=every) for name, (_, every) in self._jobs.items()}

    @property
    def runs_jobs(self) -> bool:
        """Whether this process runs the jobs now (on SQLite: holds the jobs lock)."""
        return self.running and bool(self._threads)

    def start(self) -> None:
        """Start the jobs in this process (once; a second call does nothing)."""
        with self._lock:
            self._wanted = True
            if self.running:
                return
            self._stop = threading.Event()
            self._threads = []
            self._pid = os.getpid()
            self._lead = threading.Thread(
                target=self._elect, args=(self._stop,), name=f"{THREAD_PREFIX}-lead", daemon=True
            )
            self._lead.start()
            log.info("scheduler started in process %d", self._pid)

    def ensure_running(self) -> None:
        """Restart the jobs in a forked child of a process that had them; cheap otherwise."""
        if self._wanted and self._pid != os.getpid():
            self.start()

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the jobs; with ``wait``, a job in progress finishes first (at most ``timeout``
        seconds per thread, when given). The jobs lock is released once they have."""
        with self._lock:
            self._wanted = False
            if not self.running:
                self._lead = None
                return
            self._stop.set()
            lead, self._lead = self._lead, None
            threads = [t for t in (lead, *self._threads) if t is not None]
        finished = True
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(timeout)
                    finished = finished and not thread.is_alive()
        if self._jobs_lock is not None and (wait and finished):
            self._jobs_lock.release()
        log.info("scheduler stopped in process %d", self._pid)

    def _forget(self) -> None:
        # The child has the parent's scheduler object but none of its threads, and a copy of
        # the parent's jobs lock that must not keep the parent's election alive after it exits.
        self._lead = None
        self._threads = []
        self._lock = threading.Lock()
        if self._jobs_lock is not None:
            self._jobs_lock.forget()

    # -- the threads ---------------------------------------------------------------------------

    def _elect(self, stop: threading.Event) -> None:
        """Wait until ``ready``, take the jobs lock (or stand by until it is free), then run
        the jobs."""
        poll = min(every for _, every in self._jobs.values())
        while not self._is_ready():
            if self._clock.sleep(stop, poll):
                return
        jobs_lock = self._jobs_lock
        if jobs_lock is not None:
            said = False
            while not self._try_lock(jobs_lock):
                if not said:
                    log.info(
                        "process %d stands by: another process runs the jobs (%s)",
                        os.getpid(),
                        jobs_lock.path,
                    )
                    said = True
                if self._clock.sleep(stop, poll):
                    return
            if stop.is_set():
                jobs_lock.release()
                return
            log.info("process %d runs the jobs (%s)", os.getpid(), jobs_lock.path)
        threads = [
            threading.Thread(
                target=self._loop,
                args=(name, job, every, stop),
                name=f"{THREAD_PREFIX}-{name}",
                daemon=True,
            )
            for name, (job, every) in self._jobs.items()
        ]
        with self._lock:
            if stop.is_set():
                return
            self._threads = threads
            for thread in threads:
                thread.start()

    def _is_ready(self) -> bool:
        if self._ready is None:
            return True
        try:
            return self._ready()
        except Exception:  # the check says why itself; the jobs wait for the next look
            return False

    @staticmethod
    def _try_lock(jobs_lock: JobsLock) -> bool:
        try:
            return jobs_lock.acquire()
        except OSError as exc:  # a read-only directory: the database still keeps it correct
            log.warning("cannot use %s (%s); this process runs the jobs", jobs_lock.path, exc)
            return True

    def _loop(self, name: str, job: Callable[[], Any], every: float, stop: threading.Event) -> None:
        """Run ``job`` now and every ``every`` seconds of the monotonic clock until stopped.

        A run that ends late (a long scan) is followed by the next at once, not by a burst of
        the runs it missed.
        """
        clock = self._clock
        next_at = clock.now()
        while not stop.is_set():
            delay = next_at - clock.now()
            if delay > 0 and clock.sleep(stop, delay):
                return
            if stop.is_set():
                return
            try:
                with paced():
                    job()
            except Exception:
                log.exception("%s job failed; it runs again at its next interval", name)
            next_at = max(next_at + every, clock.now())

"""The in-process jobs: scan and dispatch on APScheduler, started lazily, rebuilt after fork.

Correctness comes from the database, so every process of a shop may run these jobs at once.
A pre-forking server (gunicorn ``--preload``) forks after the parent started its scheduler;
the child inherits no threads, so it starts its own on its first capture or request.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from .config import SchedulerSettings

log = logging.getLogger(__name__)


class _SkippedRunsAreNormal(logging.Filter):
    """A dispatch pass still draining a backlog when the next one is due is expected: APScheduler
    warns about it once per interval (every second, for hours, during a big backlog); here it is
    a DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "maximum number of running instances reached" not in str(record.msg):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


# Our own child of APScheduler's logger, so the filter touches no other scheduler in the host.
_apscheduler_log = logging.getLogger("apscheduler.scheduler.shop_events")
_apscheduler_log.addFilter(_SkippedRunsAreNormal())


class Scheduler:
    """Runs ``scan`` every ``scan_interval`` and ``dispatch`` every ``dispatch_interval``."""

    def __init__(
        self,
        settings: SchedulerSettings,
        scan: Callable[[], Any],
        dispatch: Callable[[], Any],
        more: Mapping[str, tuple[Callable[[], Any], timedelta]] | None = None,
    ) -> None:
        self._settings = settings
        self._jobs = {
            "scan": (scan, settings.scan_interval),
            "dispatch": (dispatch, settings.dispatch_interval),
            **(more or {}),
        }
        self._scheduler: BackgroundScheduler | None = None
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
        """Whether this process's jobs are running."""
        return self._scheduler is not None and self._pid == os.getpid()

    def start(self) -> None:
        """Start the jobs in this process (once; a second call does nothing)."""
        with self._lock:
            self._wanted = True
            if self.running:
                return
            scheduler = BackgroundScheduler(timezone=UTC, daemon=True, logger=_apscheduler_log)
            for name, (job, interval) in self._jobs.items():
                scheduler.add_job(
                    self._guarded(name, job),
                    "interval",
                    seconds=interval.total_seconds(),
                    id=f"shop-events-{name}",
                    name=f"shop-events {name}",
                    max_instances=1,
                    coalesce=True,
                    next_run_time=datetime.now(UTC),
                )
            scheduler.start()
            self._scheduler, self._pid = scheduler, os.getpid()
            log.info("scheduler started in process %d", self._pid)

    def ensure_running(self) -> None:
        """Restart the jobs in a forked child of a process that had them; cheap otherwise."""
        if self._wanted and self._pid != os.getpid():
            self.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the jobs; with ``wait``, a job in progress finishes first."""
        with self._lock:
            self._wanted = False
            if self.running:
                assert self._scheduler is not None
                self._scheduler.shutdown(wait=wait)
                log.info("scheduler stopped in process %d", self._pid)
            self._scheduler = None

    def _forget(self) -> None:
        # The child has the parent's scheduler object but none of its threads.
        self._scheduler = None
        self._lock = threading.Lock()

    @staticmethod
    def _guarded(name: str, job: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except Exception:
                log.exception("%s job failed; it runs again at its next interval", name)

        run.__name__ = f"shop_events_{name}"
        return run

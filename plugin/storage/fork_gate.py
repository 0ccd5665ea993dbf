"""No ``fork()`` while one of the plugin's threads is inside SQLite.

SQLite keeps process-wide state (its mutexes, the list of open files and their locks) that a
forked child inherits as it was at the fork. Should one of the plugin's threads (a job, a send
renewing its lease) be inside SQLite at that moment, holding one of those mutexes, the child's
first SQLite call waits for it forever. So while a connection of the plugin's SQLite engine is
being opened or is checked out, a fork waits for it to be given back (at most
:data:`FORK_WAIT` seconds), and no connection is checked out until the fork is done. A child
starts with the gate open. The host's own threads on its own engines are the host's to keep
out of a fork.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger(__name__)

FORK_WAIT = 2.0
"""Seconds a fork waits for the connections in use (a job's statements take milliseconds)."""


class ForkGate:
    """Counts the plugin's SQLite connections in use; a fork waits until none is."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._changed = threading.Condition()
        self._in_use = 0
        self._forking = False

    def enter(self) -> None:
        """A connection is opened or checked out (waits while a fork is under way)."""
        with self._changed:
            while self._forking:
                self._changed.wait()
            self._in_use += 1

    def leave(self) -> None:
        """The connection is open, or given back."""
        with self._changed:
            self._in_use = max(0, self._in_use - 1)
            self._changed.notify_all()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Inside SQLite for the block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def before_fork(self) -> None:
        """Close the gate, and wait (bounded) for the connections in use to be given back."""
        deadline = time.monotonic() + FORK_WAIT
        with self._changed:
            self._forking = True
            while self._in_use:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "forking with %d SQLite connection(s) of shop-events in use", self._in_use
                    )
                    return
                self._changed.wait(left)

    def after_fork_in_parent(self) -> None:
        with self._changed:
            self._forking = False
            self._changed.notify_all()

    def after_fork_in_child(self) -> None:
        self._reset()  # the parent's threads, and what they held, are not in the child

    def watch(self, engine: Engine) -> None:
        """Count ``engine``'s connections: opened (by ``do_connect``) and checked out."""

        @event.listens_for(engine, "do_connect")
        def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            with self.held():
                return dialect.connect(*cargs, **cparams)

        event.listen(engine, "checkout", lambda *_: self.enter())
        event.listen(engine, "checkin", lambda *_: self.leave())


GATE = ForkGate()
os.register_at_fork(
    before=GATE.before_fork,
    after_in_parent=GATE.after_fork_in_parent,
    after_in_child=GATE.after_fork_in_child,
)

__all__ = ["FORK_WAIT", "GATE", "ForkGate"]

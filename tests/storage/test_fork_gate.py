"""A fork waits until no thread of the plugin is inside SQLite on one of its connections, and a
connection is not taken while the fork is under way."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from shop_events.config import DatabaseSettings
from shop_events.storage import fork_gate
from shop_events.storage.engines import make_engine
from shop_events.storage.fork_gate import GATE, ForkGate
from sqlalchemy import text

from tests.support import wait_until

WAIT = 10.0


def test_a_fork_waits_for_the_connection_a_thread_is_using(tmp_path: Path) -> None:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def job() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            holding.set()
            release.wait(WAIT)
            order.append("given back")

    def forker() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        order.append("forked")
        os.waitpid(pid, 0)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert holding.wait(WAIT)
        forking = threading.Thread(target=forker)
        forking.start()
        assert wait_until(lambda: GATE._forking, WAIT)  # the fork is at the gate
        assert order == []
        release.set()
        forking.join(WAIT)
        assert order == ["given back", "forked"]
        with engine.connect() as conn:  # the gate is open again
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        release.set()
        worker.join(WAIT)
        engine.dispose()


def test_a_connection_never_given_back_holds_a_fork_back_only_so_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fork_gate, "FORK_WAIT", 0.01)
    gate = ForkGate()
    gate.enter()
    with caplog.at_level(logging.WARNING, logger=fork_gate.__name__):
        gate.before_fork()
    assert "forking with 1 SQLite connection(s) of shop-events in use" in caplog.text
    gate.after_fork_in_parent()
    gate.enter()  # not held back: the fork is over
    gate.after_fork_in_child()
    gate.leave()  # one taken in the parent, given back in the child: the count stays sound
    gate.before_fork()  # nothing in use: no wait, no warning
    assert caplog.text.count("forking with") == 1

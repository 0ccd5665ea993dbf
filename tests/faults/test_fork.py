"""Fork: a pre-forking server (gunicorn ``--preload``) forks after the parent started delivering.

The parent runs its scheduler and has delivered events, so it holds a scheduler thread, a pool
of sending threads, an HTTP session with an open connection and pooled database connections.
It forks. The child inherits none of those threads; its first capture must start its own
scheduler, and its events must be sent by its own threads on its own HTTP session, while the
parent keeps using the database. Every event is delivered once.
"""

from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from shop_events import Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver

from tests.support import (
    SettingsFactory,
    add_events,
    engine_name,
    figures,
    outbox_rows,
    status_counts,
    wait_until,
)

WAIT = 20.0
PARENT_EVENTS = 3
CHILD_EVENTS = 6


@pytest.fixture
def shop(make_settings: SettingsFactory) -> Iterator[Tracker]:
    settings = make_settings(
        scheduler={"enabled": True, "scan_interval": "1s", "dispatch_interval": "1s"},
        delivery={"threads": 4},
    )
    made = Tracker(settings)
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()


def sent_with_prefix(shop: Tracker, prefix: str) -> int:
    return sum(
        1
        for row in outbox_rows(shop.engine)
        if row.status == OutboxStatus.SENT.value and f"{prefix}-" in row.dedupe_key
    )


def run_child(shop: Tracker, parent_session: object, go: int, report_to: int) -> None:
    """The forked child: wait for the parent's go, capture, let its own threads deliver."""
    select.select([go], [], [], WAIT)
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "running_after_fork": shop.scheduler.running,
        "threads_after_fork": [t.name for t in threading.enumerate()],
    }
    senders: list[str] = []
    send = shop.transport.post

    def recording_send(*args: Any, **kwargs: Any) -> Any:
        senders.append(threading.current_thread().name)
        return send(*args, **kwargs)

    shop.transport.post = recording_send  # type: ignore[method-assign]
    add_events(shop, CHILD_EVENTS, "child")  # a capture: it starts this process's scheduler
    report["running_after_capture"] = shop.scheduler.running
    report["delivered"] = wait_until(lambda: sent_with_prefix(shop, "child") == CHILD_EVENTS, WAIT)
    report["senders"] = senders
    report["threads"] = [t.name for t in threading.enumerate()]
    report["own_session"] = shop.transport.session() is not parent_session
    shop.shutdown()
    report["running_after_shutdown"] = shop.scheduler.running
    faulthandler.cancel_dump_traceback_later()
    os.write(report_to, json.dumps(report).encode())


def test_forked_child_delivers_with_its_own_threads_and_session(
    shop: Tracker, receiver: Receiver, database_url: str
) -> None:
    shop.start()
    add_events(shop, PARENT_EVENTS, "parent")
    assert wait_until(lambda: sent_with_prefix(shop, "parent") == PARENT_EVENTS, WAIT)
    parent_threads = [t.name for t in threading.enumerate()]
    assert any(name.startswith("shop-events-send") for name in parent_threads)

    parent_session = shop.transport.session()  # with a kept-alive connection to the receiver
    report_read, report_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(report_read)
            os.close(go_write)
            # should the child hang, its threads' stacks are its report (before the parent
            # gives up at 2 × WAIT); should it fail, its traceback is
            faulthandler.dump_traceback_later(1.5 * WAIT, file=report_write)
            try:
                run_child(shop, parent_session, go_read, report_write)
            except BaseException:
                os.write(report_write, traceback.format_exc().encode())
                raise
            code = 0
        finally:
            os._exit(code)
    os.close(report_write)
    os.close(go_read)
    data = b""
    parent_reads = 0
    try:
        # the parent stops delivering (so every child event is the child's own work) but keeps
        # using the same engine while the child runs, as a server's other processes do
        shop.scheduler.shutdown()
        os.write(go_write, b"go")
        ready: list[int] = []

        def child_reported() -> bool:
            nonlocal parent_reads, ready
            status_counts(shop.engine)
            parent_reads += 1
            ready = select.select([report_read], [], [], 0)[0]
            return bool(ready)

        if wait_until(child_reported, 2 * WAIT):
            data = os.read(report_read, 65536)
    finally:
        os.close(report_read)
        os.close(go_write)
        if not data.startswith(b"{"):  # no report: stuck, or failed (its stacks, its error)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert data, "the child did not report in time"
    assert os.waitstatus_to_exitcode(status) == 0, data.decode(errors="replace")
    report = json.loads(data)
    rows = outbox_rows(shop.engine)

    result = figures(rows, receiver)
    result.extra.update(
        child_sends=len(report["senders"]),
        child_sender_threads=sorted(set(report["senders"])),
        parent_db_reads_meanwhile=parent_reads,
    )
    result.show(f"fork, {engine_name(database_url)}")

    assert report["pid"] != os.getpid()
    assert report["running_after_fork"] is False
    assert not any(
        name.startswith(("shop-events-send", "APScheduler", "ThreadPoolExecutor"))
        for name in report["threads_after_fork"]
    )
    assert report["running_after_capture"] is True
    assert report["delivered"] is True
    assert len(report["senders"]) == CHILD_EVENTS  # every child event sent by the child …
    assert "MainThread" not in report["senders"]  # … on its background threads
    assert any(name.startswith("shop-events-send") for name in report["threads"])
    assert report["own_session"] is True
    assert shop.transport.session() is parent_session  # the parent's is untouched
    assert report["running_after_shutdown"] is False
    assert result.created == PARENT_EVENTS + CHILD_EVENTS
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert {r.status for r in rows} == {OutboxStatus.SENT.value}

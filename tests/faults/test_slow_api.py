"""A slow API: three workers share a backlog while every request takes 1.5 s.

A worker claims a batch and sends it a few rows at a time, so the batch's last rows start long
after the claim. Each row's lease is renewed before its send, so no other worker ever takes a
row that is about to go out: every event arrives exactly once.
"""

from __future__ import annotations

from pathlib import Path

from shop_events import Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver

from tests.support import (
    Workers,
    add_events,
    base_sections,
    engine_name,
    figures,
    outbox_rows,
    status_counts,
    wait_until,
    write_config,
)

WORKERS = 3
EVENTS = 40
THREADS = 2
BATCH = 20
LATENCY = 1.5
LEASE = 7.0
DELIVERY_TIMEOUT = 60.0


def test_a_slow_api_never_makes_two_workers_send_one_event(
    tmp_path: Path, database_url: str, receiver: Receiver, workers: Workers
) -> None:
    sections = base_sections(receiver, database_url)
    # a batch takes BATCH / THREADS × LATENCY = 15 s to send, twice the lease
    sections["api"].update(timeout="2s", connect_timeout="1s")
    sections["delivery"] = {
        "threads": THREADS,
        "batch_size": BATCH,
        "lease": f"{LEASE:g}s",
    }
    config = write_config(tmp_path / "shop.toml", sections)
    shop = Tracker(Settings.from_file(config, env={}).override(scheduler={"enabled": False}))
    shop.migrate()
    add_events(shop, EVENTS)

    receiver.latency = LATENCY
    running = [workers.start(config, f"worker{i}") for i in range(WORKERS)]
    delivered = wait_until(
        lambda: status_counts(shop.engine)[OutboxStatus.SENT.value] == EVENTS, DELIVERY_TIMEOUT
    )
    receiver.latency = 0.0
    stopped = [worker.terminate() for worker in running]
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()

    result = figures(rows, receiver)
    result.show(f"slow API, {WORKERS} workers, {engine_name(database_url)}")

    assert delivered, f"statuses {status_counts(shop.engine)}\n{workers.outputs()}"
    assert all(code == 0 for code, _ in stopped), workers.outputs()
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert result.requests == EVENTS
    assert {(r.status, r.attempts) for r in rows} == {(OutboxStatus.SENT.value, 1)}

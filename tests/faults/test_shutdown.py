"""Shutdown: SIGTERM a worker in the middle of a backlog.

The worker exits 0 within a bound; the sends it had in progress finish and are settled; the
rows it had claimed but not sent are released, so nothing stays ``in_flight``. A second worker
then delivers the rest, and every event arrives exactly once.
"""

from __future__ import annotations

import json
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
    identity,
    outbox_rows,
    status_counts,
    wait_until,
    write_config,
)

BACKLOG = 400
THREADS = 4
BATCH = 50
LATENCY = 0.2
STARTED_TIMEOUT = 20.0
EXIT_BOUND = 10.0
DRAIN_TIMEOUT = 30.0


def test_sigterm_finishes_sends_releases_the_rest_and_nothing_is_lost(
    tmp_path: Path, database_url: str, receiver: Receiver, workers: Workers
) -> None:
    sections = base_sections(receiver, database_url)
    sections["delivery"] = {"threads": THREADS, "batch_size": BATCH}
    config = write_config(tmp_path / "shop.toml", sections)
    shop = Tracker(Settings.from_file(config, env={}).override(scheduler={"enabled": False}))
    shop.migrate()
    add_events(shop, BACKLOG)

    receiver.latency = LATENCY
    first = workers.start(config, "first")
    busy = receiver.wait_for_arrivals(3 * THREADS, timeout=STARTED_TIMEOUT)
    in_flight_at_sigterm = receiver.arrived - len(receiver.requests)  # arrived, not answered
    code, exit_seconds = first.terminate(timeout=EXIT_BOUND)
    after_first = outbox_rows(shop.engine)
    sent_by_first = {identity(json.loads(r.body)) for r in after_first if r.status == "sent"}
    accepted_from_first = {identity(body) for body in receiver.events}
    requests_from_first = len(receiver.requests)

    receiver.latency = 0.0
    second = workers.start(config, "second")
    drained = wait_until(
        lambda: status_counts(shop.engine)[OutboxStatus.SENT.value] == BACKLOG, DRAIN_TIMEOUT
    )
    second_code, _ = second.terminate()
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(
        in_flight_at_sigterm=in_flight_at_sigterm,
        sent_by_first_worker=len(sent_by_first),
        exit_seconds=round(exit_seconds, 2),
        in_flight_after_exit=sum(r.status == OutboxStatus.IN_FLIGHT.value for r in after_first),
    )
    result.show(f"shutdown, {engine_name(database_url)}")

    output = first.output()
    assert busy, f"only {receiver.arrived} requests arrived\n{output}"
    assert code == 0, f"exit code {code} after {exit_seconds:.1f}s\n{output}"
    assert exit_seconds < EXIT_BOUND
    assert "SIGTERM: finishing sends in progress" in output
    # the sends in progress at SIGTERM finished and were settled: what the platform got is
    # exactly what the outbox says was sent
    assert in_flight_at_sigterm > 0
    assert sent_by_first == accepted_from_first
    assert requests_from_first == len(sent_by_first)
    assert 0 < len(sent_by_first) < BACKLOG
    # unsent claims were given back, not left to expire
    assert {r.status for r in after_first} == {OutboxStatus.SENT.value, OutboxStatus.PENDING.value}
    assert all(r.lease_token is None for r in after_first)
    assert all(r.attempts == 0 for r in after_first if r.status == OutboxStatus.PENDING.value)

    assert drained, f"statuses {status_counts(shop.engine)}\n{workers.outputs()}"
    assert second_code == 0, workers.outputs()
    assert result.lost == 0
    assert result.delivered_twice == 0
    assert result.attempts == BACKLOG

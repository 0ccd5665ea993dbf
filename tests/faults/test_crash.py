"""Crash: ``kill -9`` a worker while the receiver holds its requests open.

The killed worker's rows stay ``in_flight`` until their lease expires; then a second worker
takes them over and delivers them. Nothing is lost. Requests the killed worker had on the wire
may have reached the platform, so those events can arrive twice: never more of them than were
on the wire at the kill, and the test reports how many did.

The lease is as short as the settings allow (it must exceed twice timeout + connect timeout),
so waiting for it is a few seconds of real time between real processes.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from shop_events import Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.tables import outbox
from shop_events.testing import Receiver
from sqlalchemy import select

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

EVENTS = 40
THREADS = 4
BATCH = 20
LEASE = 7.0
START_TIMEOUT = 20.0
TAKEOVER_TIMEOUT = LEASE + 20.0


def test_killed_worker_loses_nothing_and_duplicates_at_most_what_was_on_the_wire(
    tmp_path: Path, database_url: str, receiver: Receiver, workers: Workers
) -> None:
    sections = base_sections(receiver, database_url)
    # the shortest lease the settings allow: more than twice timeout + connect timeout
    sections["api"].update(timeout="2s", connect_timeout="1s")
    sections["delivery"] = {
        "threads": THREADS,
        "batch_size": BATCH,
        "lease": f"{LEASE:g}s",
        "backoff_base": "2s",
    }
    config = write_config(tmp_path / "shop.toml", sections)
    shop = Tracker(Settings.from_file(config, env={}).override(scheduler={"enabled": False}))
    shop.migrate()
    add_events(shop, EVENTS)

    receiver.hold()
    doomed = workers.start(config, "doomed")
    on_wire = receiver.wait_for_arrivals(THREADS, timeout=START_TIMEOUT)
    doomed.kill()  # kill -9 while its requests are held open
    killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
    assert on_wire, f"only {receiver.arrived} requests arrived\n{workers.outputs()}"
    wire_at_kill = receiver.arrived
    with shop.engine.connect() as conn:
        orphaned = conn.execute(
            select(outbox.c.id, outbox.c.lease_expires_at).where(
                outbox.c.status == OutboxStatus.IN_FLIGHT.value
            )
        ).all()
    receiver.release()  # the held requests go on; the platform may accept some of them

    rescuer = workers.start(config, "rescuer")
    delivered = wait_until(
        lambda: status_counts(shop.engine)[OutboxStatus.SENT.value] == EVENTS, TAKEOVER_TIMEOUT
    )
    takeover_seconds = time.monotonic() - killed_at
    code, _ = rescuer.terminate()
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(
        on_wire_at_kill=wire_at_kill,
        in_flight_rows_at_kill=len(orphaned),
        takeover_seconds=round(takeover_seconds, 1),
    )
    result.show(f"crash, {engine_name(database_url)}")

    assert delivered, f"statuses {status_counts(shop.engine)}\n{workers.outputs()}"
    assert code == 0, workers.outputs()
    assert len(orphaned) == BATCH  # the killed worker's whole claim was stranded …
    assert result.lost == 0  # … and taken over
    assert result.delivered == EVENTS
    assert result.delivered_twice <= wire_at_kill
    assert {r.status for r in rows} == {OutboxStatus.SENT.value}
    assert all(r.lease_token is None for r in rows)
    # the rescuer touched the stranded rows only once their leases had expired
    stranded = {identity(json.loads(r.body)) for r in rows if r.id in {o.id for o in orphaned}}
    expiry = min(o.lease_expires_at for o in orphaned)
    retries = [
        r
        for r in receiver.requests
        if r.arrived is not None and r.arrived > killed_wall and identity(r.json) in stranded
    ]
    assert len(retries) == len(stranded)
    assert all(r.arrived is not None and r.arrived >= expiry for r in retries)

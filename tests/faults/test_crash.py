"""Crash: ``kill -9`` a worker while the receiver holds its requests open, or while it sends
to a fast receiver.

The killed worker's rows stay ``in_flight`` until their lease expires; then a second worker
takes them over and delivers them. Nothing is lost. Requests the killed worker had on the wire
may have reached the platform, so those events can arrive twice: never more of them than were
on the wire at the kill, and the test reports how many did. With a fast receiver and a
database slower to record than the receiver is to answer, sends that finished but were not
recorded yet go again too: no send starts while more than ``delivery.threads`` finished ones
wait to be recorded, so a crash re-sends at most two threads' worth.

The lease is as short as the settings allow (it must exceed twice timeout + connect timeout),
so waiting for it is a few seconds of real time between real processes.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from shop_events import Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.tables import outbox
from shop_events.testing import Receiver
from sqlalchemy import select, text

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


FAST_WORKERS = 3
FAST_EVENTS = 600
FAST_KILL_AFTER = 150
SLOW_SETTLE = 0.01
"""Seconds the database spends on each row it records as sent: a loaded database, slower to
record than the receiver is to answer, so finished sends queue up for recording."""


@pytest.mark.postgres
def test_killed_worker_sending_to_a_fast_receiver_duplicates_at_most_two_threads_worth(
    tmp_path: Path, pg_url: str, receiver: Receiver, workers: Workers
) -> None:
    sections = base_sections(receiver, pg_url)
    sections["api"].update(timeout="2s", connect_timeout="1s")
    sections["delivery"] = {"threads": THREADS, "lease": f"{LEASE:g}s"}
    config = write_config(tmp_path / "shop.toml", sections)
    shop = Tracker(Settings.from_file(config, env={}).override(scheduler={"enabled": False}))
    shop.migrate()
    add_events(shop, FAST_EVENTS)
    with shop.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION slow_settle() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({SLOW_SETTLE}); RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER slow_settle BEFORE UPDATE ON shop_events_outbox FOR EACH ROW "
                "WHEN (NEW.status = 'sent') EXECUTE FUNCTION slow_settle()"
            )
        )

    running = [workers.start(config, f"worker{i}") for i in range(FAST_WORKERS)]
    busy = receiver.wait_for_arrivals(FAST_KILL_AFTER, timeout=START_TIMEOUT)
    victim = running[0]
    victim.kill()
    delivered = wait_until(
        lambda: status_counts(shop.engine)[OutboxStatus.SENT.value] == FAST_EVENTS,
        TAKEOVER_TIMEOUT + 20.0,
    )
    stopped = [worker.terminate() for worker in running if worker is not victim]
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(workers=FAST_WORKERS, threads=THREADS)
    result.show("crash with a fast receiver and a slow database, postgresql")

    assert busy, f"only {receiver.arrived} requests arrived\n{workers.outputs()}"
    assert delivered, f"statuses {status_counts(shop.engine)}\n{workers.outputs()}"
    assert all(code == 0 for code, _ in stopped), workers.outputs()
    assert result.lost == 0
    assert result.delivered == FAST_EVENTS
    # what a crash re-sends: the sends on the wire plus finished ones not yet recorded
    assert result.delivered_twice <= 2 * THREADS

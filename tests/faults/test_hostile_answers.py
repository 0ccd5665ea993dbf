"""A hostile API against a real worker: answers of 300 MB, answers that trickle or never come.

A worker reads at most a few kilobytes of any answer, so its memory does not grow with what the
API sends; and every request has a deadline of ``api.connect_timeout + api.timeout``, so SIGTERM
ends the worker within that and a few seconds, whatever the API does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from shop_events import Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver, Reply

from tests.support import (
    Workers,
    add_events,
    base_sections,
    engine_name,
    outbox_rows,
    status_counts,
    wait_until,
    write_config,
)

HUGE = 300 * 1024 * 1024
PEAK_BOUND_KIB = 200 * 1024
TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
EXIT_BOUND = TIMEOUT + CONNECT_TIMEOUT + 5.0
SETTLE_TIMEOUT = 60.0
START_TIMEOUT = 20.0


def configure(tmp_path: Path, receiver: Receiver, database_url: str) -> tuple[Path, Tracker]:
    sections = base_sections(receiver, database_url)
    sections["api"].update(timeout=f"{TIMEOUT:g}s", connect_timeout=f"{CONNECT_TIMEOUT:g}s")
    sections["delivery"] = {"threads": 2, "lease": "7s"}
    config = write_config(tmp_path / "shop.toml", sections)
    shop = Tracker(Settings.from_file(config, env={}).override(scheduler={"enabled": False}))
    shop.migrate()
    return config, shop


def peak_kib(pid: int) -> int:
    """The process's peak resident memory (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM line")


def every(_body: Any) -> bool:
    return True


def test_answers_of_300_mb_do_not_grow_the_worker(
    tmp_path: Path, database_url: str, receiver: Receiver, workers: Workers
) -> None:
    config, shop = configure(tmp_path, receiver, database_url)
    add_events(shop, 3)
    receiver.rule(every, Reply(400, "", size=HUGE))

    worker = workers.start(config)
    settled = wait_until(
        lambda: status_counts(shop.engine)[OutboxStatus.DEAD.value] == 3, SETTLE_TIMEOUT
    )
    peak = peak_kib(worker.pid)
    code, _ = worker.terminate()
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()
    print(
        f"\n[300 MB answers, {engine_name(database_url)}] worker peak memory {peak // 1024} MiB, "
        f"requests {len(receiver.requests)}, statuses {sorted({r.status for r in rows})}"
    )

    assert settled, f"statuses {status_counts(shop.engine)}\n{workers.outputs()}"
    assert code == 0, workers.outputs()
    assert peak < PEAK_BOUND_KIB
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("behaviour", ["trickles", "hangs"])
def test_sigterm_ends_a_worker_within_the_request_deadline_whatever_the_api_does(
    behaviour: str, tmp_path: Path, database_url: str, receiver: Receiver, workers: Workers
) -> None:
    config, shop = configure(tmp_path, receiver, database_url)
    add_events(shop, 20)
    if behaviour == "trickles":  # the status at once, then one byte a second for hours
        receiver.rule(every, Reply(200, "", trickle=1.0, size=100_000))
    else:
        receiver.hold()

    worker = workers.start(config)
    busy = receiver.wait_for_arrivals(2, timeout=START_TIMEOUT)
    code, seconds = worker.terminate(timeout=EXIT_BOUND)
    receiver.stop()  # ends trickles and holds
    rows = outbox_rows(shop.engine)
    shop.engine.dispose()
    print(
        f"\n[SIGTERM while the API {behaviour}, {engine_name(database_url)}] exit code {code} "
        f"after {seconds:.1f}s (bound {EXIT_BOUND:g}s), in_flight left "
        f"{sum(r.status == OutboxStatus.IN_FLIGHT.value for r in rows)}"
    )

    assert busy, workers.outputs()
    assert code == 0, f"still running after {EXIT_BOUND:g}s\n{workers.outputs()}"
    assert OutboxStatus.IN_FLIGHT.value not in {r.status for r in rows}

"""Prometheus metrics: counters move by exactly what happened, against a real receiver.

Values are read from the process's default registry as differences (after minus before), so
the tests do not depend on what ran before them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from shop_events import Tracker
from shop_events.delivery.concurrency import INITIAL
from shop_events.integrations.prometheus import HealthCollector, registry
from shop_events.metrics import render
from shop_events.storage import pause as pause_state
from shop_events.testing import Receiver, Reply

from tests.delivery.test_delivery import SEED_ITEMS, abandon
from tests.support import REPO, worker_command

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def value(name: str, **labels: str) -> float:
    """A sample of the default registry now (0 while it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """How much samples moved since this was made."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self._samples = samples
        self._before = [value(name, **labels) for name, labels in samples]

    def now(self) -> list[float]:
        return [
            value(name, **labels) - before
            for (name, labels), before in zip(self._samples, self._before, strict=True)
        ]


def counter(kind: str, event_type: str) -> tuple[str, dict[str, str]]:
    return f"shop_events_events_{kind}_total", {"event_type": event_type}


def settled(event_type: str) -> Deltas:
    """The sent, retried, dead and superseded counters of ``event_type``."""
    return Deltas(*(counter(k, event_type) for k in ("sent", "retried", "dead", "superseded")))


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


def test_a_capture_counts_once_with_its_latency_and_its_enqueued_event(tracker: Tracker) -> None:
    moved = Deltas(
        counter("captured", "custom_event"),
        counter("enqueued", "login"),
        counter("captured", "cart_updated"),
        ("shop_events_capture_seconds_count", {}),
    )
    tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
    assert moved.now() == [1, 1, 0, 1]
    tracker.cart_updated("cart-1", email="ann@example.com", items=SEED_ITEMS, currency="EUR")
    assert moved.now() == [1, 1, 1, 2]  # a cart change is activity: no event is queued yet
    # the same dedupe key again inserts nothing: not enqueued twice
    from shop_events.storage.outbox import NewEvent, enqueue

    event = NewEvent(
        dedupe_key="login:fixed",
        event_type_key="login",
        key_value="ann@example.com",
        api_path=tracker.settings.api.event_path,
        body="{}",
    )
    with tracker.engine.begin() as conn:
        assert enqueue(conn, [event, event], datetime.now(UTC)) == 1
    assert moved.now()[1] == 2


def test_scan_and_dispatch_count_sent_with_send_latency(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    enqueued = Deltas(counter("enqueued", "abandoned_cart"))
    assert tracker.scan().abandoned == 1
    assert enqueued.now() == [1]
    moved = settled("abandoned_cart")
    latency = Deltas(("shop_events_send_seconds_count", {}))
    assert tracker.dispatch().sent == 1
    assert moved.now() == [1, 0, 0, 0]
    assert latency.now() == [1]
    assert value("shop_events_sends_in_flight") == 0


def test_a_500_counts_retried_then_sent(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    receiver.script(Reply(500, "upstream down"))
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    moved = settled("abandoned_cart")
    assert tracker.dispatch().retried == 1
    assert moved.now() == [0, 1, 0, 0]
    clock.tick(timedelta(seconds=31))
    assert tracker.dispatch().sent == 1
    assert moved.now() == [1, 1, 0, 0]


def test_a_400_counts_dead(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    receiver.script(Reply(400, "The event should have the following params: [orderId]"))
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    moved = settled("abandoned_cart")
    assert tracker.dispatch().dead == 1
    assert moved.now() == [0, 0, 1, 0]


def test_a_reminder_overtaken_by_an_order_counts_superseded(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    abandon(tracker)
    clock.tick(timedelta(hours=1))
    assert tracker.scan().abandoned == 1
    tracker.order_placed("order-9", email="site@en.net", items=SEED_ITEMS[:1], total="341")
    reminder, order = settled("abandoned_cart"), settled("orderCreated")
    result = tracker.dispatch()
    assert (result.superseded, result.sent) == (1, 1)
    assert reminder.now() == [0, 0, 0, 1]
    assert order.now() == [1, 0, 0, 0]


def test_send_concurrency_shows_the_adaptive_number_and_its_bound(
    tracker: Tracker, receiver: Receiver
) -> None:
    for n in range(3):
        tracker.custom_event("login", key_value=f"u{n}@example.com", params={"n": n})
    assert tracker.dispatch().sent == 3
    assert value("shop_events_send_concurrency_max") == tracker.settings.delivery.threads
    # three events never made anything wait: the number stays where it starts
    assert value("shop_events_send_concurrency") == min(INITIAL, tracker.settings.delivery.threads)


def scrape(tracker: Tracker) -> dict[str, float]:
    """The gauges read from the database, by name, through the text format."""
    body, content_type = render(registry(tracker))
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for sample in family.samples
        if sample.name.startswith(("shop_events_pending", "shop_events_oldest", "shop_events_d"))
    }


def test_scrape_reads_pending_rows_oldest_age_and_pause(
    tracker: Tracker, clock: FrozenDateTimeFactory
) -> None:
    assert scrape(tracker) == {
        "shop_events_database_readable": 1,
        "shop_events_pending_events": 0,
        "shop_events_oldest_pending_age_seconds": 0,
        "shop_events_delivery_paused": 0,
        "shop_events_delivery_circuit_open": 0,
    }
    tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
    clock.tick(timedelta(minutes=2))
    tracker.custom_event("login", key_value="bob@example.com", params={"n": 2})
    clock.tick(timedelta(seconds=30))
    with tracker.engine.begin() as conn:
        now = datetime.now(UTC)
        pause_state.pause(conn, "HTTP 401 from the API", now, now + timedelta(minutes=5))
        pause_state.open_circuit(conn, "no response", now, now + timedelta(seconds=10))
    found = scrape(tracker)
    assert found["shop_events_pending_events"] == 2
    assert found["shop_events_oldest_pending_age_seconds"] == 150
    assert found["shop_events_delivery_paused"] == 1
    assert found["shop_events_delivery_circuit_open"] == 1


def test_an_unreadable_database_is_a_gauge_not_a_failed_scrape(
    tracker: Tracker, tmp_path: Path
) -> None:
    from shop_events import Settings

    other = Tracker(Settings.load({"database": {"url": f"sqlite:///{tmp_path / 'none.db'}"}}))
    try:
        names = [m.name for m in HealthCollector(other).collect()]
        samples = [s.value for m in HealthCollector(other).collect() for s in m.samples]
    finally:
        other.engine.dispose()
    assert names == ["shop_events_database_readable"]
    assert samples == [0]


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fetch(url: str, deadline: float) -> str | None:
    """The body at ``url``, or None if nothing answered before ``deadline`` (monotonic)."""
    import time

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body.decode("utf-8")
        except OSError:
            time.sleep(0.1)  # the process is still starting: poll with a deadline
    return None


@pytest.mark.slow
def test_worker_serves_metrics_on_loopback(tmp_path: Path, receiver: Receiver) -> None:
    import time

    database = tmp_path / "events.db"
    config = tmp_path / "shop.toml"
    config.write_text(
        f"""
[api]
base_url = "{receiver.base_url}"
key = "{receiver.api_key}"

[database]
url = "sqlite:///{database}"

[scheduler]
enabled = true
scan_interval = "1s"
dispatch_interval = "1s"
""",
        encoding="utf-8",
    )
    from shop_events import Settings

    setup = Tracker(Settings.from_file(config, env={}))
    setup.migrate()
    setup.custom_event("login", key_value="ann@example.com", params={"n": 1})
    setup.engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_EVENTS_", "PROMETHEUS"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*worker_command(config), "--metrics-port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert receiver.wait_for_arrivals(1, timeout=60), log_path.read_text()
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline:  # the send is counted right after it is settled
            body = fetch(f"http://127.0.0.1:{port}/metrics", deadline)
            if body and 'shop_events_events_sent_total{event_type="login"} 1.0' in body:
                break
            time.sleep(0.1)
        assert body is not None, log_path.read_text()
        assert 'shop_events_events_sent_total{event_type="login"} 1.0' in body
        assert "shop_events_pending_events 0.0" in body
        assert "shop_events_delivery_paused 0.0" in body
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout
        if listening:  # where ss exists: only the loopback address listens
            assert f"127.0.0.1:{port}" in listening
            assert f"0.0.0.0:{port}" not in listening
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=60)
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log_path.read_text()


MULTIPROCESS_CHILD = textwrap.dedent(
    """
    import sys
    from shop_events import metrics
    for _ in range(int(sys.argv[1])):
        metrics.SENT.labels(event_type="login").inc()
    metrics.SEND_SECONDS.observe(0.2)
    """
)


@pytest.mark.slow
def test_multiprocess_mode_sums_the_processes(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for count in ("2", "3"):
        subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_CHILD, count], env=env, check=True, timeout=60
        )
    exposition = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from shop_events import metrics; "
            "sys.stdout.write(metrics.render(metrics.exposition_registry())[0].decode())",
        ],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    assert samples[("shop_events_events_sent_total", (("event_type", "login"),))] == 5
    assert samples[("shop_events_send_seconds_count", ())] == 2

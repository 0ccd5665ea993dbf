"""Bad key: the platform answers 401. Delivery pauses, spending no attempts, and says so.
And a good key refused for one event (a 403 about that event's contents): the key check
finds the key good, that event is dead with the platform's text, and delivery goes on.

In-process dispatch passes with the clock moved by freezegun, and the real ``shop-events``
commands (``status --json``, ``resume``) run through click's test runner on the same database:
one clear log line per pause interval, ``status`` saying paused and why, and once the operator
fixes the key, everything goes out, each event on its first counted attempt.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Settings, Tracker
from shop_events.cli import cli
from shop_events.storage.enums import OutboxStatus
from shop_events.testing import Receiver, Reply

from tests.support import (
    API_KEY,
    Workers,
    add_events,
    base_sections,
    engine_name,
    figures,
    outbox_rows,
    wait_until,
    write_config,
)

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
WRONG_KEY = "wrong-key-3d9f01"
EVENTS = 10
PAUSE = timedelta(minutes=5)
INTERVALS = 3
PAUSE_LINE = "delivery paused until"


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen  # type: ignore[misc]


pytestmark = pytest.mark.usefixtures("no_shop_events_environment")


def configure(path: Path, receiver: Receiver, database_url: str, key: str) -> Path:
    sections = base_sections(receiver, database_url, key=key)
    sections["scheduler"] = {"enabled": False}
    sections["delivery"] = {"threads": 4, "auth_pause": "5m"}
    return write_config(path, sections)


def status(config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli, ["--config", str(config), "status", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def test_401_pauses_with_one_line_per_interval_spends_nothing_and_resumes_when_fixed(
    tmp_path: Path,
    receiver: Receiver,
    database_url: str,
    clock: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = configure(tmp_path / "shop.toml", receiver, database_url, WRONG_KEY)
    shop = Tracker(Settings.from_file(config, env={}))
    shop.migrate()
    add_events(shop, EVENTS)
    caplog.set_level(logging.INFO, logger="shop_events")

    lines_per_interval = []
    requests_per_interval = []
    for interval in range(INTERVALS):
        before_lines = caplog.text.count(PAUSE_LINE)
        before_requests = len(receiver.requests)
        first = shop.dispatch()
        assert first.sent == first.dead == first.retried == 0
        report = status(config)
        assert report["paused"] is True
        assert "HTTP 401" in report["pause_reason"]
        assert "wrong API key" in report["pause_reason"]
        assert report["by_status"][OutboxStatus.PENDING.value] == EVENTS
        for _ in range(4):  # minutes 1 … 4 of the pause: nobody sends
            clock.tick(timedelta(minutes=1))
            assert shop.dispatch().paused
        assert all(r.attempts == 0 for r in outbox_rows(shop.engine))
        lines_per_interval.append(caplog.text.count(PAUSE_LINE) - before_lines)
        requests_per_interval.append(len(receiver.requests) - before_requests)
        clock.tick(PAUSE - timedelta(minutes=4))  # the pause ends: the next pass probes
        if interval == 0:  # the sends already started when the first 401 came, one key check
            first_pass = receiver.requests[before_requests:]
            sends = [r for r in first_pass if r.method == "POST"]
            assert len(sends) <= shop.settings.delivery.threads
            assert [r.path for r in first_pass if r.method == "GET"] == ["/api/v1/account/info"]

    pause_lines = [r for r in caplog.records if PAUSE_LINE in r.getMessage()]
    assert lines_per_interval == [1] * INTERVALS
    assert requests_per_interval[1:] == [1] * (INTERVALS - 1)  # one probe per later interval
    assert all(r.levelno == logging.ERROR for r in pause_lines)
    assert all("401" in r.getMessage() and "api.key" in r.getMessage() for r in pause_lines)
    assert WRONG_KEY not in caplog.text and API_KEY not in caplog.text
    assert WRONG_KEY not in json.dumps(status(config))
    shop.engine.dispose()

    # the operator puts the right key in the config, lifts the pause and restarts
    fixed_config = configure(tmp_path / "shop.toml", receiver, database_url, API_KEY)
    resumed = CliRunner().invoke(cli, ["--config", str(fixed_config), "resume"])
    assert resumed.exit_code == 0 and "delivery resumed" in resumed.output
    fixed = Tracker(Settings.from_file(fixed_config, env={}))
    assert fixed.dispatch().sent == EVENTS
    report = status(fixed_config)
    rows = outbox_rows(fixed.engine)
    fixed.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(
        answered_401=sum(r.status == 401 for r in receiver.requests),
        pause_lines_per_interval=lines_per_interval,
    )
    result.show(f"bad key, {engine_name(database_url)}")

    assert report["paused"] is False and report["pause_reason"] is None
    assert {(r.status, r.attempts) for r in rows} == {(OutboxStatus.SENT.value, 1)}
    assert result.lost == 0 and result.delivered_twice == 0
    assert result.requests == EVENTS + result.extra["answered_401"]


REFUSAL = "Forbidden: the contact belongs to another organisation"
LATER_EVENTS = 5
DELIVERY_TIMEOUT = 30.0


def test_a_403_for_one_event_with_a_good_key_dead_letters_it_and_delivery_goes_on(
    tmp_path: Path, receiver: Receiver, database_url: str, workers: Workers
) -> None:
    sections = base_sections(receiver, database_url)
    sections["delivery"] = {"threads": 2}
    config = write_config(tmp_path / "shop.toml", sections)
    shop = Tracker(Settings.from_file(config, env={}).override(scheduler={"enabled": False}))
    shop.migrate()
    add_events(shop, EVENTS)
    refused = "event-0"
    receiver.rule(
        lambda body: isinstance(body, dict) and Receiver.params(body).get("event_id") == refused,
        Reply(403, REFUSAL),
    )

    worker = workers.start(config)
    first = wait_until(lambda: len(receiver.events) == EVENTS - 1, DELIVERY_TIMEOUT)
    add_events(shop, LATER_EVENTS, prefix="later")  # queued after the refusal
    later = wait_until(lambda: len(receiver.events) == EVENTS - 1 + LATER_EVENTS, DELIVERY_TIMEOUT)
    code, _ = worker.terminate()
    rows = outbox_rows(shop.engine)
    report = status(config)
    shop.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(
        answered_403=sum(r.status == 403 for r in receiver.requests),
        key_checks=sum(r.path == "/api/v1/account/info" for r in receiver.requests),
        statuses=dict(Counter(r.status for r in rows)),
    )
    result.show(f"403 for one event, {engine_name(database_url)}")

    assert first and later, f"statuses {result.extra['statuses']}\n{workers.outputs()}"
    assert code == 0, workers.outputs()
    assert report["paused"] is False
    [dead] = [r for r in rows if r.status == OutboxStatus.DEAD.value]
    assert refused in dead.body
    assert REFUSAL in dead.last_error and dead.response_status == 403
    assert result.extra["statuses"] == {"sent": EVENTS - 1 + LATER_EVENTS, "dead": 1}
    assert result.extra["answered_403"] == 1 and result.extra["key_checks"] == 1

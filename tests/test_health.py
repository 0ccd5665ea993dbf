"""Whether delivery is healthy, decided in one place, and the stall watch's log lines."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from shop_events import Settings, Tracker
from shop_events.errors import ConfigError
from shop_events.health import STALLED, StallWatch, problems

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_the_watch_logs_a_stall_once_when_it_starts_and_once_when_it_ends(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    watch = tracker.watch
    assert isinstance(watch, StallWatch)
    assert tracker.scheduler.intervals["watch"] == tracker.settings.scheduler.dispatch_interval
    caplog.set_level(logging.INFO, logger="shop_events.health")
    with freeze_time(START):
        tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
        assert watch() == ()
    passes = [timedelta(minutes=16), timedelta(minutes=17), timedelta(minutes=30)]
    for later in passes:  # stalled, still stalled, still stalled
        with freeze_time(START + later):
            assert watch() == (STALLED,)
    with freeze_time(START + timedelta(minutes=31)):
        assert tracker.dispatch().sent == 1
        assert watch() == ()  # recovered
        assert watch() == ()  # and still fine
    records = [r for r in caplog.records if r.name == "shop_events.health"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.INFO]
    assert "stalled" in records[0].getMessage()
    assert "15m" in records[0].getMessage()
    assert "no longer stalled" in records[1].getMessage()


def test_a_stall_is_measured_against_alerts_stall_after(tracker: Tracker) -> None:
    settings = tracker.settings.override(alerts={"stall_after": "1h"})
    with freeze_time(START):
        tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
    assert problems(tracker.engine, settings, START + timedelta(minutes=59)) == ()
    assert problems(tracker.engine, settings, START + timedelta(minutes=61)) == (STALLED,)
    with freeze_time(START + timedelta(minutes=61)):
        assert tracker.health().problems(settings) == (STALLED,)


def test_stall_after_must_be_longer_than_zero() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.stall_after: must be longer than 0s"):
        Settings.load({"alerts": {"stall_after": "0s"}})

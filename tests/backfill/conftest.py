"""The backfill tests' fixtures: migrated trackers on every engine, and one on SQLite only for
the checks no engine changes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shop_events import Settings, Tracker
from shop_events.testing import Receiver

from tests.support import API_KEY, SettingsFactory, TrackerFactory, trackers


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    """Migrated trackers on the test database (every engine) sending to the receiver."""
    with trackers(make_settings) as make:
        yield make


@pytest.fixture
def sqlite_tracker(tmp_path: Path, sqlite_template: Path) -> Iterator[Tracker]:
    """A migrated tracker on a SQLite file that sends nowhere: for the checks of the orders."""
    path = tmp_path / "checks.db"
    shutil.copyfile(sqlite_template, path)
    settings = Settings.load(
        {
            "api": {"base_url": "http://127.0.0.1:9/api"},
            "database": {"url": f"sqlite:///{path}"},
            "scheduler": {"enabled": False},
        }
    )
    tracker = Tracker(settings)
    yield tracker
    tracker.shutdown()
    tracker.engine.dispose()


@pytest.fixture
def make_sqlite_tracker(
    tmp_path: Path, sqlite_template: Path, receiver: Receiver
) -> Iterator[TrackerFactory]:
    """Migrated trackers on a SQLite file sending to the receiver: for what no engine changes
    (the requests' shape)."""
    path = tmp_path / "sending.db"
    shutil.copyfile(sqlite_template, path)

    def make_settings(**sections: dict[str, Any]) -> Settings:
        data: dict[str, dict[str, Any]] = {
            "api": {"base_url": receiver.base_url, "key": API_KEY},
            "database": {"url": f"sqlite:///{path}"},
            "scheduler": {"enabled": False},
            "delivery": {"threads": 2},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return Settings.load(data)

    with trackers(make_settings) as make:
        yield make

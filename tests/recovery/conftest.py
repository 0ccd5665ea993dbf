"""The recovery tests' fixtures: a frozen clock the tests move, and migrated trackers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from tests.support import RECOVERY_START, SettingsFactory, TrackerFactory, trackers


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """Time frozen at :data:`~tests.support.RECOVERY_START` until the test moves it."""
    with freeze_time(RECOVERY_START) as frozen:
        assert isinstance(frozen, FrozenDateTimeFactory)  # what freeze_time yields without tick
        yield frozen


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    """Migrated trackers on the test database with some settings sections changed, all shut
    down after the test."""
    with trackers(make_settings) as make:
        yield make

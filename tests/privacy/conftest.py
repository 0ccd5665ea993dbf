"""The privacy tests' fixtures: a frozen clock the tests move, and migrated trackers with the
privacy sections of :data:`~tests.support.PRIVACY_SECTIONS`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from tests.support import (
    PRIVACY_SECTIONS,
    PRIVACY_START,
    SettingsFactory,
    TrackerFactory,
    trackers,
)


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """Time frozen at :data:`~tests.support.PRIVACY_START` until the test moves it."""
    with freeze_time(PRIVACY_START) as frozen:
        assert isinstance(frozen, FrozenDateTimeFactory)
        yield frozen


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    """Migrated trackers with the privacy sections and some sections changed, shut down after
    the test."""
    with trackers(make_settings, **PRIVACY_SECTIONS) as make:
        yield make

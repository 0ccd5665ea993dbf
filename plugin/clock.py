"""The one clock of the plugin: timezone-aware UTC, injectable for tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A callable returning the current time as an aware UTC ``datetime``."""


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC (freezegun moves it)."""
    return datetime.now(UTC)

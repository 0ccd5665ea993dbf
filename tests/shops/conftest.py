"""Fixtures of the test shops' suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.shops import logging_restored


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The loggers as they were before the test ran a Flask-Migrate command."""
    with logging_restored():
        yield

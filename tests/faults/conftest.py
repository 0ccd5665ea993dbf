"""Fixtures of the fault tests: worker processes killed at teardown, an empty PostgreSQL database.

Every fault test is ``slow``: real worker processes, real waits for them, a PostgreSQL cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import postgres
from tests.support import Workers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``slow`` (the fast loop deselects them)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes that are killed at teardown if the test left them running."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A new empty database on the test-started PostgreSQL cluster."""
    return postgres.new_database(pg_server)

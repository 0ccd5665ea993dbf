"""``/shop-events/healthz``: 200 ok, or 503 and one word; no access check, no data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from freezegun import freeze_time
from shop_events import Settings, ShopEvents, Tracker
from shop_events.storage import pause as pause_state
from shop_events.testing import Receiver

HEALTHZ = "/shop-events/healthz"
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def app_for(tracker: Tracker) -> Flask:
    """An app without admin_access: the operator pages are off (404)."""
    app = Flask("shop")
    app.testing = True
    ShopEvents(app, tracker=tracker)
    return app


def healthz(app: Flask) -> tuple[int, str]:
    response = app.test_client().get(HEALTHZ)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "text/plain"
    return response.status_code, response.get_data(as_text=True)


def test_ok_without_access_check_while_operator_pages_are_off(tracker: Tracker) -> None:
    app = app_for(tracker)
    assert app.test_client().get("/shop-events/admin/").status_code == 404
    assert healthz(app) == (200, "ok")


def test_paused_after_a_401(tracker: Tracker) -> None:
    app = app_for(tracker)
    with tracker.engine.begin() as conn:
        now = datetime.now(UTC)
        pause_state.pause(conn, "HTTP 401 from the API", now, now + timedelta(minutes=5))
    assert healthz(app) == (503, "paused")
    with tracker.engine.begin() as conn:
        pause_state.resume(conn)
    assert healthz(app) == (200, "ok")


def test_paused_by_the_receivers_401(settings: Settings, receiver: Receiver) -> None:
    receiver.api_key = "another-key"  # the platform refuses the configured key
    tracker = Tracker(settings)
    tracker.migrate()
    try:
        tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
        assert tracker.dispatch().sent == 0
        assert healthz(app_for(tracker)) == (503, "paused")
    finally:
        tracker.engine.dispose()


def test_stalled_once_the_oldest_pending_event_is_older_than_stall_after(
    tracker: Tracker,
) -> None:
    app = app_for(tracker)
    with freeze_time(START):
        tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
        assert healthz(app) == (200, "ok")
    with freeze_time(START + timedelta(minutes=15)):
        assert healthz(app) == (200, "ok")
    with freeze_time(START + timedelta(minutes=15, seconds=1)):
        assert healthz(app) == (503, "stalled")
        assert tracker.dispatch().sent == 1
        assert healthz(app) == (200, "ok")


@pytest.fixture
def unmigrated(empty_database_url: str, receiver: Receiver) -> Iterator[Tracker]:
    """A tracker on a database never migrated."""
    made = Tracker(
        Settings.load(
            {
                "api": {"base_url": receiver.base_url, "key": receiver.api_key},
                "database": {"url": empty_database_url},
                "scheduler": {"enabled": False},
            }
        )
    )
    yield made
    made.engine.dispose()


def test_missing_tables(unmigrated: Tracker) -> None:
    app = app_for(unmigrated)
    assert healthz(app) == (503, "missing-tables")
    unmigrated.migrate()
    assert healthz(app) == (200, "ok")

"""``/shop-events/metrics``: Prometheus text behind ``admin_access`` or ``web.metrics_token``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from shop_events import Settings, ShopEvents, Tracker

from tests.support import SettingsFactory

METRICS = "/shop-events/metrics"
TOKEN = "scrape-3f9a1c"


@pytest.fixture
def scraped(make_settings: SettingsFactory) -> Iterator[Tracker]:
    """A migrated tracker whose ``web.metrics_token`` is :data:`TOKEN`."""
    made = Tracker(make_settings(web={"metrics_token": TOKEN}))
    made.migrate()
    yield made
    made.engine.dispose()


def app_for(tracker: Tracker, admin_access: Callable[[], bool] | None = None) -> Flask:
    app = Flask("shop")
    app.testing = True
    ShopEvents(app, tracker=tracker, admin_access=admin_access)
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_off_while_neither_token_nor_access_check_is_configured(tracker: Tracker) -> None:
    client = app_for(tracker).test_client()
    assert client.get(METRICS).status_code == 404
    assert client.get(METRICS, headers=bearer("anything")).status_code == 404


def test_the_token_lets_a_scraper_in_and_nothing_else_does(scraped: Tracker) -> None:
    client = app_for(scraped).test_client()
    assert client.get(METRICS).status_code == 403
    assert client.get(METRICS, headers=bearer("wrong")).status_code == 403
    assert client.get(METRICS, headers={"Authorization": TOKEN}).status_code == 403
    response = client.get(METRICS, headers=bearer(TOKEN))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type.startswith("text/plain; version=0.0.4")


def test_admin_access_lets_an_operator_in(tracker: Tracker) -> None:
    allowed = {"yes": False}
    client = app_for(tracker, admin_access=lambda: allowed["yes"]).test_client()
    assert client.get(METRICS).status_code == 403
    allowed["yes"] = True
    assert client.get(METRICS).status_code == 200


def test_the_body_is_the_prometheus_text_format_with_every_metric(scraped: Tracker) -> None:
    scraped.custom_event("login", key_value="ann@example.com", params={"n": 1})
    response = app_for(scraped).test_client().get(METRICS, headers=bearer(TOKEN))
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(response.get_data(as_text=True))
    }
    assert {
        "shop_events_events_captured": "counter",
        "shop_events_events_enqueued": "counter",
        "shop_events_events_sent": "counter",
        "shop_events_events_retried": "counter",
        "shop_events_events_dead": "counter",
        "shop_events_events_superseded": "counter",
        "shop_events_send_seconds": "histogram",
        "shop_events_capture_seconds": "histogram",
        "shop_events_sends_in_flight": "gauge",
        "shop_events_send_concurrency": "gauge",
        "shop_events_send_concurrency_max": "gauge",
        "shop_events_pending_events": "gauge",
        "shop_events_oldest_pending_age_seconds": "gauge",
        "shop_events_delivery_paused": "gauge",
        "shop_events_database_readable": "gauge",
    }.items() <= families.items()
    assert "shop_events_pending_events 1.0" in response.get_data(as_text=True)


def test_the_token_is_a_secret_read_from_the_environment() -> None:
    settings = Settings.load(env={"SHOP_EVENTS_WEB_METRICS_TOKEN": TOKEN})
    assert settings.web.metrics_token.reveal() == TOKEN
    assert TOKEN not in repr(settings.web)

"""``ShopEvents(app)``'s blueprint and ``POST /shop-events/track``: checks, limits, cookie, bots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from shop_events import Settings, ShopEvents, Tracker
from shop_events.errors import ConfigError
from shop_events.integrations.flask.extension import tracker_for
from shop_events.integrations.flask.tracking import RateLimiter
from shop_events.storage.tables import browses
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.support import SettingsFactory

TRACK = "/shop-events/track"
SCRIPT = "/shop-events/static/shop-events.js"
HERE = "http://localhost"
ITEM = {"name": "Hair styler", "price": "341", "url": "http://localhost/p/1"}


def make_app(tracker: Tracker, **options: Any) -> Flask:
    app = Flask("shop")
    app.testing = True
    ShopEvents(app, tracker=tracker, **options)
    return app


@pytest.fixture
def web_tracker(make_settings: SettingsFactory) -> Iterator[Tracker]:
    """A migrated tracker whose ``[web]`` section the test may set through ``request.param``."""
    made = Tracker(make_settings())
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()


def tracker_with(make_settings: SettingsFactory, **web: Any) -> Tracker:
    made = Tracker(make_settings(web=web))
    made.migrate()
    return made


@pytest.fixture
def client(web_tracker: Tracker) -> FlaskClient:
    return make_app(web_tracker).test_client()


def post(
    client: FlaskClient,
    payload: Any,
    origin: str | None = HERE,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> TestResponse:
    sent = {"Origin": origin} if origin else {}
    sent.update(headers or {})
    return client.post(TRACK, json=payload, headers=sent, **kwargs)


def views(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(browses).order_by(browses.c.browse_key)))


def refused(response: TestResponse, status: int, field: str) -> str:
    assert response.status_code == status, response.data
    body = response.get_json()
    assert body["field"] == field, body
    message: str = body["error"]
    assert message.startswith(field) or field in message
    return message


# ---------------------------------------------------------------------- Flask integration


def test_blueprint_registered_once_with_the_extension(settings: Settings) -> None:
    app = Flask("shop")
    ShopEvents(app, settings=settings)
    assert "shop_events" in app.blueprints
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("shop_events.")}
    assert {TRACK, "/shop-events/admin/", "/shop-events/static/<path:filename>"} <= rules
    with pytest.raises(RuntimeError, match="already registered"):
        ShopEvents(app, settings=settings)
    tracker_for(app).engine.dispose()


def test_the_script_is_small_and_served(settings: Settings) -> None:
    app = Flask("shop")
    ShopEvents(app, settings=settings)
    response = app.test_client().get(SCRIPT)
    assert response.status_code == 200
    assert "javascript" in response.mimetype
    assert len(response.data) < 5000
    text = response.data.decode()
    assert "window.shopEvents" in text and "productViewed" in text and "identify" in text
    assert "import " not in text and "require(" not in text  # no dependencies
    response.close()
    tracker_for(app).engine.dispose()


def test_scheduler_runs_once_in_a_process_with_two_apps(make_settings: SettingsFactory) -> None:
    settings = make_settings(scheduler={"enabled": True, "scan_interval": "1h"})
    Tracker(settings).migrate()
    first, second = Flask("one"), Flask("two")
    ShopEvents(first, settings=settings)
    ShopEvents(second, settings=settings)  # an app factory called twice: same settings
    one, two = tracker_for(first), tracker_for(second)
    try:
        assert one is not two
        assert one.scheduler.running
        assert not two.scheduler.running  # the first app's jobs serve both
        second.test_client().get("/shop-events/static/shop-events.js").close()
        assert not two.scheduler.running  # a request does not start a second one either
        shared = Tracker(settings)
        ext = ShopEvents(tracker=shared)
        third, fourth = Flask("three"), Flask("four")
        ext.init_app(third)
        ext.init_app(fourth)  # one extension, one tracker, two apps
        assert tracker_for(third) is tracker_for(fourth) is shared
        assert not shared.scheduler.running
        shared.engine.dispose()
    finally:
        for made in (one, two):
            made.shutdown()
            made.engine.dispose()
    other = make_settings(scheduler={"enabled": True, "scan_interval": "2h"})
    app = Flask("other")
    ShopEvents(app, settings=other)  # different settings: its own jobs
    try:
        assert tracker_for(app).scheduler.running
    finally:
        tracker_for(app).shutdown()
        tracker_for(app).engine.dispose()


def test_reloader_parent_starts_no_scheduler(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(scheduler={"enabled": True, "scan_interval": "1h"})
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    app = Flask("shop")
    app.debug = True
    ShopEvents(app, settings=settings)
    assert not tracker_for(app).scheduler.running
    tracker_for(app).engine.dispose()


# ---------------------------------------------------------------------- tracking


def test_product_view_is_recorded_under_a_first_party_cookie(
    client: FlaskClient, web_tracker: Tracker
) -> None:
    response = post(client, {"type": "product_view", "item": ITEM})
    assert response.status_code == 204, response.data
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("se_vid=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http
    visitor = cookie.split(";")[0].split("=", 1)[1]
    (row,) = views(web_tracker)
    assert row.browse_key == f"v:{visitor}" and row.visitor_id == visitor
    assert json.loads(row.items)[0]["name"] == "Hair styler"
    # the next call comes with the cookie: same visitor, one browse
    again = post(client, {"type": "product_view", "item": {**ITEM, "name": "Comb", "url": None}})
    assert again.status_code == 204
    assert again.headers["Set-Cookie"].startswith(f"se_vid={visitor};")
    (row,) = views(web_tracker)
    assert [i["name"] for i in json.loads(row.items)] == ["Comb", "Hair styler"]


def test_cookie_is_secure_over_https(client: FlaskClient) -> None:
    response = post(
        client,
        {"type": "product_view", "item": {**ITEM, "url": "https://shop.example/p/1"}},
        origin="https://shop.example",
        base_url="https://shop.example",
    )
    assert response.status_code == 204, response.data
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_forged_cookie_value_is_replaced(client: FlaskClient, web_tracker: Tracker) -> None:
    client.set_cookie("se_vid", "<bad>", domain="localhost")
    response = post(client, {"type": "product_view", "item": ITEM})
    assert response.status_code == 204
    visitor = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert visitor != "<bad>" and len(visitor) >= 16
    assert views(web_tracker)[0].visitor_id == visitor


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"item": ITEM}, 400, "type"),
        ({"type": "purchase"}, 400, "type"),
        ({"type": "product_view"}, 400, "item"),
        ({"type": "product_view", "item": "Hair styler"}, 400, "item"),
        ({"type": "product_view", "item": {"price": "1"}}, 400, "item.name"),
        ({"type": "product_view", "item": {"name": "A", "price": "cheap"}}, 400, "item.price"),
        ({"type": "product_view", "item": {**ITEM, "colour": "red"}}, 400, "item.colour"),
        ({"type": "product_view", "item": {**ITEM, "url": "ftp://x"}}, 400, "item.url"),
        ({"type": "product_view", "item": ITEM, "email": "a@example.com"}, 400, "email"),
        ({"type": "identify"}, 400, "email"),
        ({"type": "identify", "email": "not an address"}, 400, "email"),
        ({"type": "identify", "email": 42}, 400, "email"),
        ([1, 2], 400, "body"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(
    client: FlaskClient, web_tracker: Tracker, payload: Any, status: int, field: str
) -> None:
    refused(post(client, payload), status, field)
    assert views(web_tracker) == []


def test_not_json_wrong_type_and_too_big(client: FlaskClient, web_tracker: Tracker) -> None:
    headers = {"Origin": HERE}
    response = client.post(TRACK, data="{nope", content_type="application/json", headers=headers)
    assert "not valid JSON" in refused(response, 400, "body")
    deep = "[" * 2000 + "]" * 2000  # under the size limit, over the parser's recursion limit
    response = client.post(TRACK, data=deep, content_type="application/json", headers=headers)
    refused(response, 400, "body")
    response = client.post(TRACK, data={"type": "identify"}, headers=headers)  # a form post
    refused(response, 415, "Content-Type")
    big = {"type": "product_view", "item": {**ITEM, "name": "x" * 5000}}
    assert "4096" in refused(post(client, big), 413, "body")
    assert client.get(TRACK).status_code == 405
    assert views(web_tracker) == []


def test_other_sites_are_refused(client: FlaskClient, web_tracker: Tracker) -> None:
    payload = {"type": "product_view", "item": ITEM}
    assert "evil.example" in refused(post(client, payload, "https://evil.example"), 403, "Origin")
    refused(post(client, payload, origin=None), 403, "Origin")  # no Origin, no Referer
    refused(post(client, payload, "null"), 403, "Origin")
    referer = {"Referer": "http://localhost/p/1"}
    assert post(client, payload, origin=None, headers=referer).status_code == 204
    assert len(views(web_tracker)) == 1


def test_allowed_origins_and_token(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(
        make_settings, allowed_origins=["https://www.shop.example"], token="t0ken-1"
    )
    client = make_app(tracker).test_client()
    payload = {"type": "product_view", "item": {**ITEM, "url": "https://www.shop.example/p"}}
    response = post(client, payload, "https://www.shop.example")
    assert response.status_code == 204, response.data
    assert response.headers["Access-Control-Allow-Origin"] == "https://www.shop.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    preflight = client.options(TRACK, headers={"Origin": "https://www.shop.example"})
    assert preflight.status_code == 204
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    refused(client.options(TRACK, headers={"Origin": "https://evil.example"}), 403, "Origin")
    token = {"X-Shop-Events-Token": "t0ken-1"}
    assert post(client, {"type": "product_view", "item": ITEM}, None, token).status_code == 204
    wrong = {"X-Shop-Events-Token": "guess"}
    refused(post(client, payload, "https://www.shop.example", wrong), 403, "X-Shop-Events-Token")
    tracker.engine.dispose()


def test_product_links_must_point_at_the_shop(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, item_hosts=["*.cdn.example"])
    client = make_app(tracker).test_client()
    phishing = {**ITEM, "url": "https://evil.example/login"}
    message = refused(post(client, {"type": "product_view", "item": phishing}), 400, "item.url")
    assert "evil.example" in message and "web.item_hosts" in message
    image = {**ITEM, "imageurl": "https://img.cdn.example/1.jpg"}
    assert post(client, {"type": "product_view", "item": image}).status_code == 204
    tracker.engine.dispose()


def test_rate_limit_per_client_address(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, rate_limit=1.0, rate_burst=3)
    client = make_app(tracker).test_client()
    payload = {"type": "product_view", "item": ITEM}
    with freeze_time("2024-03-01 10:00:00") as frozen:
        for _ in range(3):
            assert post(client, payload).status_code == 204
        limited = post(client, payload)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"
        assert "slow down" in limited.get_json()["error"]
        other = {"REMOTE_ADDR": "10.0.0.9"}
        assert post(client, payload, environ_base=other).status_code == 204  # its own bucket
        frozen.tick(1.0)
        assert post(client, payload).status_code == 204
        assert post(client, payload).status_code == 429
    tracker.engine.dispose()


def test_rate_limiter_forgets_idle_clients() -> None:
    now = [datetime(2024, 3, 1, tzinfo=UTC)]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0], max_clients=3)
    for address in ("a", "b", "c", "d", "e"):
        assert limiter.take(address) == 0
    assert len(limiter._buckets) <= 3
    assert limiter.take("e") == 0
    assert limiter.take("e") == pytest.approx(1.0)


def test_bots_are_dropped_without_a_cookie(client: FlaskClient, web_tracker: Tracker) -> None:
    bot = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}
    response = post(client, {"type": "product_view", "item": ITEM}, headers=bot)
    assert response.status_code == 204
    assert "Set-Cookie" not in response.headers
    response = post(client, {"type": "identify", "email": "ann@example.com"}, headers=bot)
    assert response.status_code == 204
    assert views(web_tracker) == []


def test_identify_from_the_browser_moves_the_views_to_the_email(
    client: FlaskClient, web_tracker: Tracker
) -> None:
    assert post(client, {"type": "product_view", "item": ITEM}).status_code == 204
    response = post(client, {"type": "identify", "email": "Ann@Example.com"})
    assert response.status_code == 204
    (row,) = views(web_tracker)
    assert row.browse_key == "e:ann@example.com" and row.email == "ann@example.com"


def test_identify_from_the_browser_can_be_turned_off(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, identify=False)
    client = make_app(tracker).test_client()
    refused(post(client, {"type": "identify", "email": "ann@example.com"}), 403, "type")
    tracker.engine.dispose()


def test_server_side_identify_and_current_email(web_tracker: Tracker) -> None:
    app = make_app(web_tracker, current_email=lambda: "bob@example.com")
    ext: ShopEvents = ShopEvents(tracker=web_tracker)

    @app.post("/login")
    def login() -> str:
        return "linked" if ext.identify("carol@example.com") else "no visitor"

    client = app.test_client()
    assert client.post("/login").data == b"no visitor"  # no se_vid cookie yet
    assert post(client, {"type": "product_view", "item": ITEM}).status_code == 204
    (row,) = views(web_tracker)
    assert row.browse_key == "e:bob@example.com"  # the signed-in shopper, known to the server
    assert client.post("/login").data == b"linked"


def test_tracking_can_be_turned_off(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, track=False)
    client = make_app(tracker).test_client()
    assert post(client, {"type": "product_view", "item": ITEM}).status_code == 404
    tracker.engine.dispose()


def test_web_settings_are_checked(tmp_path: Path) -> None:
    for bad, key in (
        ({"allowed_origins": ["shop.example"]}, "web.allowed_origins"),
        ({"rate_limit": 0}, "web.rate_limit"),
        ({"rate_burst": 0}, "web.rate_burst"),
        ({"max_body_bytes": 10}, "web.max_body_bytes"),
        ({"cookie_name": "se vid"}, "web.cookie_name"),
        ({"admin_access": "not a path"}, "web.admin_access"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            Settings.load({"web": bad})
    env = {"SHOP_EVENTS_WEB_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    loaded = Settings.load(env=env)
    assert loaded.web.allowed_origins == ("https://a.example", "https://b.example")
    assert "t0k" not in repr(Settings.load({"web": {"token": "t0k"}}))

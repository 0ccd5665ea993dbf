"""``ShopEvents(app)``'s blueprint and ``POST /shop-events/track``: checks, limits, cookie, bots.

The hostile cases (links that browsers read differently, a spoofed ``Host``, an ``identify`` of a
stranger's address, input that used to crash the endpoint) run against a real Flask app through
its test client, which sends whatever headers a client can.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from shop_events import Settings, ShopEvents, Tracker
from shop_events.errors import ConfigError
from shop_events.integrations.flask.extension import tracker_for
from shop_events.integrations.flask.tracking import RateLimiter
from shop_events.storage.tables import browses, visitors
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.support import SettingsFactory

TRACK = "/shop-events/track"
SCRIPT = "/shop-events/static/shop-events.js"
HERE = "http://localhost"
ITEM = {"name": "Hair styler", "price": "341", "url": "http://localhost/p/1"}
SHOP_HOSTS = ["localhost", "shop.example"]
"""``web.shop_hosts`` of the tests' shop (the test client's default host is localhost)."""


def make_app(tracker: Tracker, **options: Any) -> Flask:
    app = Flask("shop")
    app.testing = True
    ShopEvents(app, tracker=tracker, **options)
    return app


@pytest.fixture
def web_tracker(make_settings: SettingsFactory) -> Iterator[Tracker]:
    """A migrated tracker whose ``[web]`` section the test may set through ``request.param``."""
    made = Tracker(make_settings(web={"shop_hosts": SHOP_HOSTS}))
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()


def tracker_with(make_settings: SettingsFactory, **web: Any) -> Tracker:
    made = Tracker(make_settings(web={"shop_hosts": SHOP_HOSTS, **web}))
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
        assert not one.scheduler.running  # the jobs start with the first request served
        first.test_client().get(SCRIPT).close()
        assert one.scheduler.running
        second.test_client().get(SCRIPT).close()
        assert not two.scheduler.running  # the first app's jobs serve both
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
        app.test_client().get(SCRIPT).close()
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


def test_bots_are_dropped_without_a_cookie(web_tracker: Tracker) -> None:
    client = make_app(web_tracker, current_email=lambda: "ann@example.com").test_client()
    bot = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}
    response = post(client, {"type": "product_view", "item": ITEM}, headers=bot)
    assert response.status_code == 204
    assert "Set-Cookie" not in response.headers
    response = post(client, {"type": "identify", "email": "ann@example.com"}, headers=bot)
    assert response.status_code == 204
    assert views(web_tracker) == []


def test_identify_any_moves_the_views_to_the_email(make_settings: SettingsFactory) -> None:
    web_tracker = tracker_with(make_settings, identify="any")
    client = make_app(web_tracker).test_client()
    assert post(client, {"type": "product_view", "item": ITEM}).status_code == 204
    response = post(client, {"type": "identify", "email": "Ann@Example.com"})
    assert response.status_code == 204
    (row,) = views(web_tracker)
    assert row.browse_key == "e:ann@example.com" and row.email == "ann@example.com"
    web_tracker.engine.dispose()


def test_identify_from_the_browser_can_be_turned_off(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, identify="off")
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


# ---------------------------------------------------------------------- hostile browsers


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("https://evil.example\\@shop.example/p", "evil.example"),  # browsers: host evil.example
        ("https://evil.example\\\\shop.example/p", "evil.example"),
        ("https://ann@shop.example/p", "user name"),
        ("https://evil.example%5C@shop.example/p", "user name"),
        ("https://evil.example\t@shop.example/p", "user name"),  # the tab is dropped first
        ("https://ｅｖｉｌ.example/p", "evil.example"),  # fullwidth letters fold to ASCII
        ("https://evil.example%2eshop.example/p", "evil.example.shop.example"),
        ("javascript:alert(1)//http://shop.example/", "http(s)"),
        ("https://shop.example＃.evil.example/p", "http(s)"),
        ("http://[::1/p", "http(s)"),
        ("http://[bad", "http(s)"),
    ],
)
def test_links_are_read_as_browsers_read_them(
    client: FlaskClient, web_tracker: Tracker, url: str, where: str
) -> None:
    for field in ("url", "imageurl"):
        payload = {"type": "product_view", "item": {**ITEM, field: url}}
        assert where in refused(post(client, payload), 400, f"item.{field}")
    assert views(web_tracker) == []


def test_links_are_stored_as_browsers_serialize_them(
    client: FlaskClient, web_tracker: Tracker
) -> None:
    item = {
        **ITEM,
        "url": "HTTP://Shop.Example:80/p/1?q=a b",
        "imageurl": "https:\\\\shop.example/i",
    }
    assert post(client, {"type": "product_view", "item": item}).status_code == 204
    (row,) = views(web_tracker)
    stored = json.loads(row.items)[0]
    assert stored["url"] == "http://shop.example/p/1?q=a%20b"
    assert stored["imageurl"] == "https://shop.example/i"


def test_a_spoofed_host_header_is_not_the_shop(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, token="t0ken-1")
    client = make_app(tracker).test_client()
    evil = {"type": "product_view", "item": {**ITEM, "url": "https://evil.example/p"}}
    spoofed = {"Host": "evil.example"}
    message = refused(post(client, evil, "https://evil.example", spoofed), 403, "Origin")
    assert "evil.example" in message and "web.shop_hosts" in message
    # a request with the token skips the origin check; its links are still checked
    token = {**spoofed, "X-Shop-Events-Token": "t0ken-1"}
    assert "evil.example" in refused(post(client, evil, None, token), 400, "item.url")
    assert views(tracker) == []
    tracker.engine.dispose()


def test_without_shop_hosts_browsers_are_refused_naming_the_setting(
    make_settings: SettingsFactory,
) -> None:
    tracker = Tracker(make_settings(web={"token": "t0ken-1"}))
    tracker.migrate()
    client = make_app(tracker).test_client()
    payload = {"type": "product_view", "item": ITEM}
    assert "web.shop_hosts" in refused(post(client, payload), 403, "Origin")
    referer = {"Referer": "http://localhost/p/1"}
    assert "web.shop_hosts" in refused(post(client, payload, None, referer), 403, "Referer")
    token = {"X-Shop-Events-Token": "t0ken-1"}
    assert "web.shop_hosts" in refused(post(client, payload, None, token), 400, "item.url")
    no_link = {"type": "product_view", "item": {"name": "Comb", "price": "3"}}
    assert post(client, no_link, None, token).status_code == 204
    assert len(views(tracker)) == 1
    tracker.engine.dispose()


def test_server_name_is_the_shop_host_when_shop_hosts_is_empty(
    make_settings: SettingsFactory,
) -> None:
    tracker = Tracker(make_settings())
    tracker.migrate()
    app = Flask("shop")
    app.config["SERVER_NAME"] = "shop.example:8000"
    ShopEvents(app, tracker=tracker)
    client = app.test_client()
    item = {**ITEM, "url": "https://shop.example/p/1"}
    response = post(client, {"type": "product_view", "item": item}, "http://shop.example:8000")
    assert response.status_code == 204, response.data
    evil = {"type": "product_view", "item": {**ITEM, "url": "https://evil.example/p"}}
    refused(post(client, evil, "http://shop.example:8000"), 400, "item.url")
    refused(post(client, evil, "http://evil.example"), 403, "Origin")
    assert len(views(tracker)) == 1
    tracker.engine.dispose()


def test_shop_host_globs_and_exact_hosts(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, shop_hosts=["*.shop.example", "[::1]", "127.0.0.1"])
    client = make_app(tracker).test_client()
    for origin, status in (
        ("https://www.shop.example", 204),
        ("https://WWW.Shop.Example.:8443", 204),
        ("http://[0:0::1]:5000", 204),
        ("http://0x7f.1", 204),  # browsers read 127.0.0.1
        ("https://shop.example", 403),  # the glob wants a subdomain
        ("https://www.shop.example.evil.example", 403),
        ("https://xn--shop-ex0a.example", 403),
    ):
        payload = {"type": "product_view", "item": {"name": "Comb", "price": "3"}}
        response = post(client, payload, origin)
        assert response.status_code == status, (origin, response.data)
    tracker.engine.dispose()


def bound(tracker: Tracker) -> dict[str, str]:
    with tracker.engine.connect() as conn:
        return {r.visitor_id: r.email for r in conn.execute(select(visitors))}


def test_identify_binds_only_the_signed_in_shopper_by_default(web_tracker: Tracker) -> None:
    signed_in: list[str | None] = [None]
    app = make_app(web_tracker, current_email=lambda: signed_in[0])
    client = app.test_client()
    assert post(client, {"type": "product_view", "item": ITEM}).status_code == 204
    stranger = {"type": "identify", "email": "victim@example.com"}
    assert "signed" in refused(post(client, stranger), 403, "email")
    (row,) = views(web_tracker)
    assert row.email is None and row.browse_key.startswith("v:")  # no email would go out
    assert bound(web_tracker) == {}
    signed_in[0] = "Ann@Example.com"
    assert "signed-in" in refused(post(client, stranger), 403, "email")
    assert post(client, {"type": "identify", "email": "ann@example.COM"}).status_code == 204
    assert list(bound(web_tracker).values()) == ["ann@example.com"]


def test_identify_with_the_token_may_bind_any_address(make_settings: SettingsFactory) -> None:
    tracker = tracker_with(make_settings, token="t0ken-1")
    client = make_app(tracker).test_client()
    token = {"X-Shop-Events-Token": "t0ken-1"}
    assert post(client, {"type": "identify", "email": "bob@example.com"}, None, token).status_code
    assert list(bound(tracker).values()) == ["bob@example.com"]
    refused(post(client, {"type": "identify", "email": "eve@example.com"}), 403, "email")
    tracker.engine.dispose()


def test_identify_setting_is_checked() -> None:
    assert Settings.load({}).web.identify == "signed-in"
    for old in (True, False, "yes"):
        with pytest.raises(ConfigError, match=r"web\.identify: .*'signed-in', 'any', 'off'"):
            Settings.load({"web": {"identify": old}})
    assert Settings.load(env={"SHOP_EVENTS_WEB_IDENTIFY": "any"}).web.identify == "any"


LONE = '"caf\\ud800e"'
HUGE = "9" * 5000
DEEP = "[" * 2000 + "]" * 2000
VIEW = '{"type": "product_view", "item": $}'


def fill(template: str, value: str) -> str:
    """``template`` with its ``$`` replaced by the raw JSON ``value``."""
    return template.replace("$", value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (fill(VIEW, fill('{"name": $, "price": "1"}', LONE)), "item.name"),
        (fill(VIEW, fill('{"name": "a", "price": "1", $: 1}', LONE)), "item"),
        (fill('{"type": "identify", "email": $}', LONE), "email"),
        (fill('{"type": $}', LONE), "type"),
        (fill(VIEW, fill('{"name": "a", "price": $}', HUGE)), "item.price"),
        (fill(VIEW, fill('{"name": "a", "price": -$}', HUGE)), "item.price"),
        (fill(VIEW, fill('{"name": "a", "quantity": $}', HUGE)), "item.quantity"),
        (fill(VIEW, '{"name": "a", "price": NaN}'), "item.price"),
        (fill(VIEW, '{"name": "a", "price": 1e999999999}'), "item.price"),
        (fill(VIEW, '{"name": "a", "tags": {"t": [1]}}'), "item.tags.t"),
        (fill(VIEW, fill('{"name": $, "price": "1"}', DEEP[:1200])), "body"),
        (fill(VIEW, "[" * 600 + "]" * 600), "item[0][0]"),
        (DEEP, "body"),
        (b'{"type": "identify", "email": "\xff"}', "body"),  # not UTF-8
    ],
)
def test_input_that_crashed_the_endpoint_gets_a_4xx_naming_the_field(
    make_settings: SettingsFactory, body: str | bytes, field: str
) -> None:
    tracker = tracker_with(make_settings, max_body_bytes=16384, identify="any")
    client = make_app(tracker).test_client()
    response = client.post(
        TRACK, data=body, content_type="application/json", headers={"Origin": HERE}
    )
    refused(response, 400, field)
    assert views(tracker) == [] and bound(tracker) == {}
    tracker.engine.dispose()


@pytest.mark.parametrize(
    "origin",
    [
        "http://[bad",
        "http://[::1/p",
        "http://localhost＃.evil.example",  # as a test client sends it
        "http://localhost\xef\xbc\x83.evil.example",  # as a WSGI server decodes its UTF-8
        "http://ann@localhost",
        "ftp://localhost",
        "localhost",
    ],
)
def test_origins_a_browser_never_sends_are_refused(client: FlaskClient, origin: str) -> None:
    refused(post(client, {"type": "product_view", "item": ITEM}, origin), 403, "Origin")


def test_web_hosts_settings_are_checked() -> None:
    for bad, key in (
        ({"shop_hosts": ["https://shop.example"]}, "web.shop_hosts"),
        ({"shop_hosts": ["shop.example:8000"]}, "web.shop_hosts"),
        ({"shop_hosts": ["bücher.example"]}, "web.shop_hosts"),
        ({"item_hosts": ["cdn.example/x"]}, "web.item_hosts"),
        ({"allowed_origins": ["http://[bad"]}, "web.allowed_origins"),
        ({"allowed_origins": ["https://u:KEY@shop.example"]}, "web.allowed_origins"),
        ({"allowed_origins": ["https://shop.example/p"]}, "web.allowed_origins"),
        ({"allowed_origins": ["https://caf\ud800e.example"]}, "web.allowed_origins"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as raised:
            Settings.load({"web": bad})
        assert "KEY" not in str(raised.value)
    web = Settings.load({"web": {"shop_hosts": ["*.shop.example", "xn--bcher-kva.example"]}}).web
    assert web.shop_hosts == ("*.shop.example", "xn--bcher-kva.example")


# ---------------------------------------------------------------------- fuzz

HOSTILE_TEXT = [
    "caf\ud800e",
    "\udfff",
    "x" * 300,
    "http://[bad",
    "http://[::1/p",
    "https://shop.example＃.evil.example/",
    "https://evil.example\\@localhost/p",
    "https://ann@localhost/p",
    "http://localhost/p/1",
    "ann@example.com",
    "",
]
HOSTILE_RAW = ["9" * 5000, "-" + "9" * 4400, "1e999999999", "NaN", "-Infinity", "1.5", "0", "true"]
ITEM_KEYS = ["name", "price", "url", "imageurl", "quantity", "sku", "brand", "tags", "caf\ud800e"]


def _raw(value: str) -> str:
    """A JSON string literal; lone surrogates escaped the way JSON allows."""
    return json.dumps(value)


scalars = st.one_of(
    st.sampled_from(HOSTILE_TEXT).map(_raw),
    st.sampled_from(HOSTILE_RAW),
    st.text(max_size=30).map(_raw),
    st.integers().map(str),
    st.integers(min_value=0, max_value=2500).map(lambda n: "[" * n + "]" * n),
)
raw_json = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: "[" + ", ".join(v) + "]"),
        st.dictionaries(st.sampled_from(ITEM_KEYS).map(_raw), inner, max_size=4).map(
            lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=8,
)
near_valid = st.builds(
    lambda name, price, url: (
        '{"type": "product_view", "item": {"name": ' + name + ", "
        '"price": ' + price + ', "url": ' + url + "}}"
    ),
    st.one_of(st.text(max_size=20).map(_raw), st.sampled_from(HOSTILE_TEXT).map(_raw)),
    st.sampled_from(['"19.90"', "3", *HOSTILE_RAW]),
    st.sampled_from([*HOSTILE_TEXT, "http://localhost/p/2", "https://shop.example/a?b#c"]).map(
        _raw
    ),
)
bodies = st.one_of(
    near_valid,
    st.builds(
        lambda kind, item: '{"type": ' + kind + ', "item": ' + item + "}",
        st.sampled_from(['"product_view"', '"identify"', _raw("caf\ud800e")]),
        raw_json,
    ),
    st.builds(lambda email: fill('{"type": "identify", "email": $}', email), raw_json),
    raw_json,
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)
origins = st.sampled_from(
    [
        HERE,
        HERE,
        HERE,
        "http://[bad",
        "http://[::1/p",
        "http://localhost＃",
        "http://localhost\xef\xbc\x83",
        "",
    ]
)


@hypothesis.settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, origin=origins, pad=st.sampled_from([0, 0, 5000]))
def test_the_endpoint_answers_any_input_with_204_or_a_4xx_naming_the_field(
    fuzz_client: FlaskClient, body: str, origin: str, pad: int
) -> None:
    data = (body + " " * pad).encode("utf-8", "surrogatepass")
    headers = {"Origin": origin} if origin else {}
    response = fuzz_client.post(TRACK, data=data, content_type="application/json", headers=headers)
    assert response.status_code < 500, response.data
    hypothesis.event(f"status {response.status_code}")
    if response.status_code >= 400:
        answer = response.get_json()
        assert answer["field"] and answer["error"].startswith(answer["field"]), answer
        assert len(answer["error"]) < 400, answer
    else:
        assert response.status_code == 204, response.data


@pytest.fixture
def fuzz_client(make_settings: SettingsFactory) -> Iterator[FlaskClient]:
    tracker = tracker_with(make_settings, rate_burst=100_000, identify="any")
    yield make_app(tracker).test_client()
    tracker.engine.dispose()

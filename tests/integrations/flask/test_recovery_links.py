"""``GET /shop-events/r/<token>``: a reminder's recovery link opened through a real Flask app.

The reminders are real: a cart left alone, scanned with a frozen and moved clock, dispatched to
a receiver on 127.0.0.1; the link opened is the ``cart_url`` the receiver got. Opening it counts
a click, restores the cart through the shop's callback and leads on; anything else a visitor
can send gets a page that tells nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Settings, ShopEvents, Tracker
from shop_events.errors import ConfigError
from shop_events.integrations.flask.extension import tracker_for
from shop_events.integrations.flask.links import MAX_TOKEN_CHARS
from shop_events.payload.links import Link, read, sign
from shop_events.storage.tables import reminders
from shop_events.testing import Receiver
from sqlalchemy import delete, select, text
from werkzeug.test import TestResponse

from tests.support import SettingsFactory, TrackerFactory, trackers

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ANN = "ann@example.com"
CART = "cart-7f3a"
SHOP = "https://shop.example"
RESTORE_URL = f"{SHOP}/cart/{CART}?ref=mail"
SECRET = "links-secret-for-the-tests-0123"
RECOVERY = {"links": True, "base_url": SHOP, "secret": SECRET, "link_ttl": "2d"}
UTM = "utm_source=shop-events&utm_medium=email&utm_campaign=abandoned_cart&utm_content=step-1"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SCANNER = "Mozilla/5.0 (compatible; Barracuda-LinkProtect-Bot/1.0)"
STRICT_CSP = "default-src 'none'"

AppFactory = Callable[..., Flask]


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    """Trackers with the links on (:data:`RECOVERY`) and a reminder an hour after the last
    activity, unless a test names its own sections."""
    with trackers(make_settings, recovery=RECOVERY, abandoned_cart={"after": "1h"}) as make:
        yield make


@pytest.fixture
def tracker(make_tracker: TrackerFactory) -> Tracker:
    return make_tracker()


def make_app(tracker: Tracker, **options: Any) -> Flask:
    app = Flask("shop")
    app.testing = True
    app.secret_key = "the-shop's-own-session-key"
    ShopEvents(app, tracker=tracker, **options)
    return app


def reminder_link(tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory) -> str:
    """Leave a cart alone past ``after``, send its reminder; the path of its ``cart_url``."""
    tracker.cart_updated(
        CART,
        email=ANN,
        items=[Item(name="Hair styler", price="341", quantity=2), Item(name="Comb", price=9)],
        currency="EUR",
        restore_url=RESTORE_URL,
    )
    clock.tick(HOUR + timedelta(seconds=1))
    assert tracker.scan().abandoned == 1
    assert tracker.dispatch().sent == 1
    [event] = receiver.events
    url = Receiver.params(event)["cart_url"]
    assert url.startswith(f"{SHOP}/shop-events/r/"), url
    clock.tick(HOUR)
    return urlsplit(url).path


def token_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def open_(client: FlaskClient, path: str, agent: str = BROWSER) -> TestResponse:
    return client.get(path, headers={"User-Agent": agent})


def ledger(tracker: Tracker) -> tuple[int, datetime | None]:
    """The reminder's clicks and the time of the first."""
    with tracker.engine.connect() as conn:
        row = conn.execute(select(reminders.c.clicks, reminders.c.first_click_at)).one()
    return row.clicks, row.first_click_at


def private(response: TestResponse, strict: bool = True) -> None:
    """The answer stays out of caches, indexes and other sites' ``Referer``."""
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "noindex" in response.headers["X-Robots-Tag"]
    if strict:
        policy = response.headers["Content-Security-Policy"]
        assert policy.startswith(STRICT_CSP) and "script-src" not in policy


# ------------------------------------------------------------------------- opening a link


def test_an_opened_link_counts_the_click_and_redirects_to_the_restore_url_with_utm(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    path = reminder_link(tracker, receiver, clock)
    client = make_app(tracker).test_client()
    assert ledger(tracker) == (0, None)
    opened_at = tracker.clock()

    response = open_(client, path)

    assert response.status_code == 303
    assert response.location == f"{RESTORE_URL}&{UTM}"
    assert ledger(tracker) == (1, opened_at)
    private(response)
    clock.tick(HOUR)
    assert open_(client, path).status_code == 303
    assert ledger(tracker) == (2, opened_at)  # the first click's time is kept


def test_without_a_restore_url_the_link_leads_to_the_shops_home(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated(CART, email=ANN, items=[Item(name="Comb", price=9)], currency="EUR")
    clock.tick(2 * HOUR)
    tracker.scan()
    tracker.dispatch()
    path = urlsplit(Receiver.params(receiver.events[0])["cart_url"]).path
    response = open_(make_app(tracker).test_client(), path)
    assert (response.status_code, response.location) == (303, f"{SHOP}/?{UTM}")


def test_the_restore_cart_callback_gets_the_cart_and_its_answer_is_returned(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    path = reminder_link(tracker, receiver, clock)
    calls: list[tuple[str, list[dict[str, Any]]]] = []

    def restore(cart_id: str, items: list[dict[str, Any]]) -> tuple[str, int]:
        calls.append((cart_id, items))
        session["cart"] = cart_id  # runs in the visitor's request
        return f"restored {len(items)} products", 200

    app = make_app(tracker, restore_cart=restore)
    client = app.test_client()

    @app.get("/my-cart")
    def my_cart() -> str:
        return str(session.get("cart"))

    response = open_(client, path)

    assert (response.status_code, response.get_data(as_text=True)) == (200, "restored 2 products")
    [(cart_id, items)] = calls
    assert cart_id == CART
    assert [(i["name"], i["price"], i.get("quantity")) for i in items] == [
        ("Hair styler", "341", "2"),
        ("Comb", "9", None),
    ]
    assert client.get("/my-cart").get_data(as_text=True) == CART
    assert ledger(tracker)[0] == 1
    private(response, strict=False)  # the shop's own page keeps its own policy
    assert "Content-Security-Policy" not in response.headers


def test_a_callback_that_returns_none_gets_the_default_redirect(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    path = reminder_link(tracker, receiver, clock)
    seen: list[str] = []
    client = make_app(
        tracker, restore_cart=lambda cart_id, items: seen.append(cart_id)
    ).test_client()
    response = open_(client, path)
    assert seen == [CART]
    assert (response.status_code, response.location) == (303, f"{RESTORE_URL}&{UTM}")
    private(response)


def test_a_failing_callback_is_logged_and_the_visitor_still_gets_the_redirect(
    tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = reminder_link(tracker, receiver, clock)

    def broken(cart_id: str, items: list[dict[str, Any]]) -> None:
        raise RuntimeError("the shop's cart service is down")

    client = make_app(tracker, restore_cart=broken).test_client()
    with caplog.at_level(logging.ERROR, "shop_events"):
        response = open_(client, path)
    assert (response.status_code, response.location) == (303, f"{RESTORE_URL}&{UTM}")
    [record] = [r for r in caplog.records if "restore_cart" in r.getMessage()]
    assert record.exc_info is not None and "cart service is down" in str(record.exc_info[1])
    assert ledger(tracker)[0] == 1


def test_an_answer_flask_cannot_send_counts_as_a_failed_callback(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    path = reminder_link(tracker, receiver, clock)
    client = make_app(tracker, restore_cart=lambda cart_id, items: object()).test_client()
    response = open_(client, path)
    assert (response.status_code, response.location) == (303, f"{RESTORE_URL}&{UTM}")


@pytest.mark.parametrize(
    "agent", [SCANNER, "Mozilla/5.0 HeadlessChrome/124.0", ""], ids=["scanner", "headless", "head"]
)
def test_a_bot_is_redirected_but_neither_counted_nor_restored(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory, agent: str
) -> None:
    path = reminder_link(tracker, receiver, clock)
    seen: list[str] = []
    client = make_app(
        tracker, restore_cart=lambda cart_id, items: seen.append(cart_id)
    ).test_client()
    if agent:
        response = open_(client, path, agent)
    else:
        response = client.head(path, headers={"User-Agent": BROWSER})  # a link checker
    assert (response.status_code, response.location) == (303, f"{RESTORE_URL}&{UTM}")
    assert ledger(tracker) == (0, None)
    assert seen == []
    assert open_(client, path).status_code == 303  # the shopper, after the scanner
    assert ledger(tracker)[0] == 1 and seen == [CART]


# ------------------------------------------------------------------------- refused links


def resigned(path: str, secret: str, **changes: Any) -> str:
    """A token naming what ``path``'s token names (with ``changes``), signed with ``secret``."""
    link = read(SECRET, token_of(path), datetime.now(UTC))
    fields = {**link.__dict__, **changes}
    return sign(secret, Link(**fields))


def refused_page(response: TestResponse, *secrets: str) -> str:
    assert response.status_code == 410, response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "This link is no longer valid" in page
    assert f'href="{SHOP}/"' in page  # leads to the shop
    for secret in (CART, ANN, "Hair styler", "abandoned_cart", *secrets):
        assert secret not in page
    private(response)
    return page


def test_tampered_expired_unknown_and_foreign_links_get_one_page_that_tells_nothing(
    tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = reminder_link(tracker, receiver, clock)
    token = token_of(path)
    client = make_app(tracker).test_client()
    tampered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    cases = {
        "tampered": (tampered, "the signature does not match"),
        "another secret": (resigned(path, "another-secret-32-characters!!!!"), "signature"),
        "too long": ("A" * (MAX_TOKEN_CHARS + 1), f"a token of {MAX_TOKEN_CHARS + 1} characters"),
        "markup": ("%3Cscript%3Ealert(1)%3C", "signature"),
    }
    pages = set()
    with caplog.at_level(logging.INFO, "shop_events"):
        for name, (bad, reason) in cases.items():
            caplog.clear()
            page = refused_page(open_(client, f"/shop-events/r/{bad}"), bad[:40], reason)
            assert "alert(1)" not in page, name
            pages.add(page)
            assert any(reason in r.getMessage() for r in caplog.records), name
            assert all(r.levelno == logging.INFO for r in caplog.records), name

        # unknown: the signature holds, the reminder is gone (purged, another database)
        with tracker.engine.begin() as conn:
            saved = conn.execute(select(reminders)).one()._asdict()
            conn.execute(delete(reminders))
        caplog.clear()
        pages.add(refused_page(open_(client, path), token, "no such reminder"))
        assert "no such reminder" in caplog.text
        with tracker.engine.begin() as conn:
            conn.execute(reminders.insert().values(**saved))
        assert open_(client, path).status_code == 303  # the same link, its reminder back

        # expired: link_ttl (2d) after the reminder was queued
        clock.tick(timedelta(days=2))
        caplog.clear()
        pages.add(refused_page(open_(client, path), token, "expired at"))
        assert "expired at" in caplog.text
    assert len(pages) == 1  # one page for every reason: it tells nothing
    assert ledger(tracker)[0] == 1  # only the good opening counted


def test_a_link_for_another_cart_signed_with_the_right_secret_names_no_reminder(
    tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    path = reminder_link(tracker, receiver, clock)
    swapped = resigned(path, SECRET, cart_id="cart-of-someone-else")
    refused_page(open_(make_app(tracker).test_client(), f"/shop-events/r/{swapped}"))
    assert ledger(tracker)[0] == 0


def test_a_database_failure_gets_a_friendly_503_not_a_traceback(
    tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = reminder_link(tracker, receiver, clock)
    app = make_app(tracker)
    with tracker.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {reminders.name}"))
    with caplog.at_level(logging.WARNING, "shop_events"):
        response = open_(app.test_client(), path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    page = response.get_data(as_text=True)
    assert "We could not open your cart just now" in page
    assert "Traceback" not in page and reminders.name not in page and CART not in page
    private(response)
    assert "the database failed" in caplog.text


def test_too_many_openings_from_one_address_get_429_with_retry_after(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(web={"rate_limit": 0.5, "rate_burst": 3})
    path = reminder_link(tracker, receiver, clock)
    client = make_app(tracker).test_client()
    assert [open_(client, path).status_code for _ in range(3)] == [303, 303, 303]
    response = open_(client, path)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert "One moment, please" in response.get_data(as_text=True)
    private(response)
    assert ledger(tracker)[0] == 3
    # another address has its own bucket; time refills this one
    other = client.get(
        path, headers={"User-Agent": BROWSER}, environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    assert other.status_code == 303
    clock.tick(timedelta(seconds=2))
    assert open_(client, path).status_code == 303
    # the bad tokens of a guesser are limited too
    assert [open_(client, "/shop-events/r/guess").status_code for _ in range(2)] == [429, 429]


def test_without_links_configured_the_endpoint_is_not_there(
    make_tracker: TrackerFactory,
) -> None:
    tracker = make_tracker(recovery={"links": False})
    client = make_app(tracker).test_client()
    forged = sign("", Link(reminder="r", cart_id="c", step=1, expires_at=START + HOUR))
    assert open_(client, f"/shop-events/r/{forged}").status_code == 404


# ------------------------------------------------------------------------- the links' secret


def test_under_flask_the_secret_is_derived_from_the_apps_secret_key(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    settings = make_settings(
        recovery={"links": True, "base_url": SHOP}, abandoned_cart={"after": "1h"}
    )
    assert settings.recovery.secret.reveal() == ""
    app = Flask("shop")
    app.secret_key = "the-shop's-own-session-key"
    ShopEvents(app, settings=settings)
    tracker = tracker_for(app)
    try:
        tracker.migrate()
        derived = tracker.settings.recovery.secret.reveal()
        assert len(derived) >= 32 and derived != app.secret_key
        path = reminder_link(tracker, receiver, clock)
        client = app.test_client()
        response = open_(client, path)  # signed by the app's tracker, verified by the app
        assert (response.status_code, response.location) == (303, f"{RESTORE_URL}&{UTM}")
        # the session key itself does not sign links
        link = Link(reminder="x", cart_id=CART, step=1, expires_at=START + 9 * HOUR)
        assert open_(client, f"/shop-events/r/{sign(app.secret_key, link)}").status_code == 410
        same = Flask("shop")
        same.secret_key = app.secret_key
        ShopEvents(same, settings=settings)
        assert tracker_for(same).settings.recovery.secret.reveal() == derived  # stable
        tracker_for(same).engine.dispose()
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def test_under_flask_links_without_a_secret_or_a_secret_key_are_a_config_error(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(recovery={"links": True, "base_url": SHOP})
    app = Flask("shop")
    with pytest.raises(ConfigError, match=r"recovery\.secret"):
        ShopEvents(app, settings=settings)


def test_a_standalone_tracker_with_links_and_no_secret_is_a_config_error(
    make_settings: SettingsFactory,
) -> None:
    settings: Settings = make_settings(recovery={"links": True, "base_url": SHOP})
    with pytest.raises(ConfigError, match=r"recovery\.secret"):
        Tracker(settings)

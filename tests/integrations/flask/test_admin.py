"""The operator pages: access, history with filters and paging, one event, health, dead letters,
replay with CSRF, template preview, and escaping of everything shown."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from shop_events import Item, ShopEvents, Tracker
from shop_events.errors import ConfigError
from shop_events.storage import pause as pause_state
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.tables import outbox
from sqlalchemy import insert, select, update

from tests.support import SettingsFactory

ADMIN = "/shop-events/admin/"
START = "2024-03-01 10:00:00"
SCRIPT = "<script>alert(1)</script>"


def allow_all() -> bool:
    """An admin_access check, named by its import path in the settings test."""
    return True


def make_app(tracker: Tracker, secret: str | None = "s3cret", **options: Any) -> Flask:
    app = Flask("shop")
    app.testing = True
    if secret:
        app.secret_key = secret
    ShopEvents(app, tracker=tracker, **options)
    return app


@pytest.fixture
def client(tracker: Tracker) -> FlaskClient:
    return make_app(tracker, admin_access=lambda: True).test_client()


def page(client: FlaskClient, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.data[:500]
    return response.data.decode()


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def set_row(tracker: Tracker, event_id: int, **values: Any) -> None:
    with tracker.engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == event_id).values(**values))


def row(tracker: Tracker, event_id: int) -> Any:
    with tracker.engine.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.id == event_id)).one()


def ids_in(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'/shop-events/admin/events/(\d+)">\1<', html)]


def seed_events(tracker: Tracker, frozen: Any = None) -> dict[str, int]:
    """Four events an hour apart from 10:00: two types, two contacts, one sent, one dead."""
    if frozen is None:
        with freeze_time(START) as own:
            return seed_events(tracker, own)
    made = {}
    for name, kind, email in (
        ("ann_login", "login", "ann@example.com"),
        ("bob_login", "login", "bob@example.com"),
        ("ann_wish", "wishlist", "ann@example.com"),
        ("bob_wish", "wishlist", "bob@example.com"),
    ):
        key = tracker.custom_event(kind, key_value=email, params={"email": email})
        with tracker.engine.connect() as conn:
            made[name] = conn.execute(
                select(outbox.c.id).where(outbox.c.dedupe_key == key)
            ).scalar_one()
        frozen.tick(timedelta(hours=1))
    set_row(tracker, made["ann_login"], status=OutboxStatus.SENT.value, response_status=200)
    set_row(
        tracker,
        made["bob_wish"],
        status=OutboxStatus.DEAD.value,
        attempts=3,
        response_status=400,
        last_error="400: The event should have the following params: [email]",
    )
    return made


# ---------------------------------------------------------------------- access


def test_pages_are_off_without_an_access_check(tracker: Tracker) -> None:
    client = make_app(tracker).test_client()
    for url in (ADMIN, f"{ADMIN}events/1", f"{ADMIN}health", f"{ADMIN}dead"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"{ADMIN}dead/replay", data={"all": "1"}).status_code == 404


def test_access_check_decides_per_request(tracker: Tracker) -> None:
    allowed = {"yes": False}
    client = make_app(tracker, admin_access=lambda: allowed["yes"]).test_client()
    assert client.get(ADMIN).status_code == 403
    assert client.post(f"{ADMIN}dead/replay", data={"all": "1"}).status_code == 403
    allowed["yes"] = True
    assert client.get(ADMIN).status_code == 200

    def broken() -> bool:
        raise RuntimeError("auth backend down")

    assert make_app(tracker, admin_access=broken).test_client().get(ADMIN).status_code == 403


def test_access_check_from_settings(make_settings: SettingsFactory) -> None:
    tracker = Tracker(
        make_settings(web={"admin_access": "tests.integrations.flask.test_admin:allow_all"})
    )
    tracker.migrate()
    assert make_app(tracker).test_client().get(ADMIN).status_code == 200
    missing = Tracker(
        make_settings(web={"admin_access": "tests.integrations.flask.test_admin:nope"})
    )
    with pytest.raises(ConfigError, match=r"web\.admin_access"):
        make_app(missing)
    tracker.engine.dispose()
    missing.engine.dispose()


def test_pages_are_not_cached_or_framed(client: FlaskClient) -> None:
    response = client.get(ADMIN)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src" not in response.headers["Content-Security-Policy"]  # no scripts at all
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


# ---------------------------------------------------------------------- history


def test_history_filters_by_type_status_email_and_time(
    client: FlaskClient, tracker: Tracker
) -> None:
    made = seed_events(tracker)
    everything = page(client, ADMIN)
    assert ids_in(everything) == sorted(made.values(), reverse=True)  # newest first
    assert ids_in(page(client, f"{ADMIN}?type=login")) == [made["bob_login"], made["ann_login"]]
    assert ids_in(page(client, f"{ADMIN}?status=dead")) == [made["bob_wish"]]
    assert ids_in(page(client, f"{ADMIN}?email=ANN@")) == [made["ann_wish"], made["ann_login"]]
    window = page(client, f"{ADMIN}?since=2024-03-01T11:00&until=2024-03-01T13:00")
    assert ids_in(window) == [made["ann_wish"], made["bob_login"]]
    combined = page(client, f"{ADMIN}?type=wishlist&status=pending&email=ann")
    assert ids_in(combined) == [made["ann_wish"]]
    assert ids_in(page(client, f"{ADMIN}?email=%25")) == []  # LIKE wildcards are literal
    bad = page(client, f"{ADMIN}?since=yesterday")
    assert "since: &#39;yesterday&#39; is not a date" in bad
    assert ids_in(bad) == sorted(made.values(), reverse=True)  # the bad filter is ignored


def test_history_pages_by_id(make_settings: SettingsFactory) -> None:
    tracker = Tracker(make_settings(web={"admin_page_size": 2}))
    tracker.migrate()
    client = make_app(tracker, admin_access=lambda: True).test_client()
    made = sorted(seed_events(tracker).values(), reverse=True)
    first = page(client, f"{ADMIN}?type=")
    assert ids_in(first) == made[:2]
    older = re.search(r'id="page-older" href="([^"]+)"', first)
    assert older and "page-newer" not in first
    second = page(client, older.group(1).replace("&amp;", "&"))
    assert ids_in(second) == made[2:]
    assert "page-older" not in second
    newer = re.search(r'id="page-newer" href="([^"]+)"', second)
    assert newer
    assert ids_in(page(client, newer.group(1).replace("&amp;", "&"))) == made[:2]
    filtered = page(client, f"{ADMIN}?type=login")
    assert ids_in(filtered) == made[2:]  # the two logins are the oldest two
    tracker.engine.dispose()


# ---------------------------------------------------------------------- one event


def test_event_page_shows_body_products_response_and_attempts(
    client: FlaskClient, tracker: Tracker
) -> None:
    item = Item(
        name="Hair styler",
        price="341",
        url="https://shop.example/p/1",
        imageurl="https://shop.example/i/1.jpg",
        brand="Le Petit Olivier",
        tags={"weight": "200"},
    )
    with freeze_time(START) as frozen:
        tracker.cart_updated("cart-1", email="ann@example.com", items=[item], currency="EUR")
        frozen.tick(timedelta(hours=2))
        tracker.scan()
    with tracker.engine.connect() as conn:
        event = conn.execute(select(outbox)).one()
    set_row(tracker, event.id, attempts=2, response_status=503, last_error="503: busy")
    listed = page(client, ADMIN)
    assert '<td class="num products">1</td>' in listed  # the products in its items param
    html = page(client, f"{ADMIN}events/{event.id}")
    assert "abandoned_cart" in html and "ann@example.com" in html
    assert '<img src="https://shop.example/i/1.jpg"' in html
    assert '<a href="https://shop.example/p/1"' in html
    assert "<th>tags_weight</th>" in html and "Le Petit Olivier" in html
    assert 'id="event-attempts">2<' in html
    assert 'id="event-response">503<' in html and "503: busy" in html
    assert "earlier attempts are not stored one by one" in html
    exact = re.search(r'<pre id="body">(.*?)</pre>', html, re.S)
    assert exact
    shown = exact.group(1).replace("&#34;", '"').replace("&#39;", "'").replace("&amp;", "&")
    assert shown == event.body  # the exact text sent, byte for byte
    assert page(client, f"{ADMIN}events/999999", 404)


def test_everything_shown_is_escaped(client: FlaskClient, tracker: Tracker) -> None:
    evil_item = Item(name=SCRIPT, price="1", brand='"><img src=x onerror=alert(2)>')
    with freeze_time(START) as frozen:
        tracker.cart_updated("cart-x", email="ann@example.com", items=[evil_item])
        frozen.tick(timedelta(hours=2))
        assert tracker.scan().enqueued == 1  # an abandoned_cart with the product in its items
    tracker.custom_event(
        "evil",
        key_value=f"{SCRIPT}@example.com",
        params={
            "email": f"{SCRIPT}@example.com",
            "items": {
                "array": [
                    {
                        "name": SCRIPT,
                        "imageurl": "javascript:alert(3)",
                        "url": "javascript:alert(4)",
                    }
                ]
            },
        },
    )
    with tracker.engine.begin() as conn:
        conn.execute(
            insert(outbox).values(
                dedupe_key="legacy",
                event_type_key="legacy",
                key_value=f"{SCRIPT}@example.com",
                api_path="v1/event",
                body='{"params": [{"name": "x", "value": "</pre><script>alert(5)</script>"}]}',
                status=OutboxStatus.DEAD.value,
                attempts=1,
                next_attempt_at=tracker.clock(),
                created_at=tracker.clock(),
                last_error=f"400: {SCRIPT}",
            )
        )
        ids = list(conn.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars())
    urls = [ADMIN, f"{ADMIN}dead", f"{ADMIN}health", f"{ADMIN}?email={SCRIPT}"]
    urls += [f"{ADMIN}events/{i}" for i in ids]
    for url in urls:
        html = page(client, url)
        assert "<script>alert" not in html, url
        assert "<img src=x" not in html, url
        assert 'src="javascript:' not in html and 'href="javascript:' not in html, url
    first = page(client, f"{ADMIN}events/{ids[0]}")
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in first  # in the products table
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in first
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@example.com" in page(client, ADMIN)
    token = csrf(page(client, f"{ADMIN}events/{ids[0]}"))
    response = client.post(
        f"{ADMIN}events/{ids[0]}/preview",
        data={"csrf_token": token, "template": "$!data.get('email') " + SCRIPT},
    )
    html = response.data.decode()
    assert "<script>alert" not in html
    assert 'srcdoc="' in html and "sandbox" in html  # the rendered email cannot run scripts


# ---------------------------------------------------------------------- health


def test_health_page(client: FlaskClient, tracker: Tracker) -> None:
    with freeze_time(START) as frozen:
        seed_events(tracker, frozen)  # 10:00 … 13:00; the oldest pending is bob_login (11:00)
        tracker.cart_updated(
            "cart-7", email="cat@example.com", items=[Item(name="Comb", price="5")]
        )  # 14:00
        tracker.cart_updated("cart-8", visitor_id="v-123456", items=[Item(name="Brush", price="7")])
        frozen.tick(timedelta(minutes=20))
        with tracker.engine.begin() as conn:
            pause_state.pause(
                conn,
                "401 Unauthorized: check api.key",
                tracker.clock(),
                tracker.clock() + timedelta(minutes=5),
            )
        html = page(client, f"{ADMIN}health")
    assert 'id="count-pending">2<' in html and 'id="count-dead">1<' in html
    assert 'id="count-sent">1<' in html
    assert "3h 20m old" in html  # 14:20 − 11:00
    assert "paused" in html and "401 Unauthorized: check api.key" in html
    waiting = html.split('id="waiting-carts"', 1)[1]
    assert waiting.index("cart-7") < waiting.index("cart-8")
    assert "2024-03-01 15:00:00" in waiting  # due: last change + abandoned_cart.after (1h)
    assert "<td>40m</td>" in waiting  # due in: 15:00 − 14:20
    assert "no email yet" in waiting and "v-123456" in waiting


# ---------------------------------------------------------------------- dead letters


def test_replay_needs_the_csrf_token(client: FlaskClient, tracker: Tracker) -> None:
    made = seed_events(tracker)
    dead = made["bob_wish"]
    html = page(client, f"{ADMIN}dead")
    assert ids_in(html) == [dead] and "The event should have the following params" in html
    response = client.post(f"{ADMIN}dead/replay", data={"id": str(dead)})
    assert response.status_code == 400 and b"CSRF" in response.data
    response = client.post(f"{ADMIN}dead/replay", data={"id": str(dead), "csrf_token": "forged"})
    assert response.status_code == 400
    assert row(tracker, dead).status == OutboxStatus.DEAD.value
    other = make_app(tracker, admin_access=lambda: True).test_client()
    stolen = csrf(page(other, f"{ADMIN}dead"))  # another session's token does not work here
    page(client, f"{ADMIN}dead")
    assert (
        client.post(f"{ADMIN}dead/replay", data={"id": str(dead), "csrf_token": stolen}).status_code
        == 400
    )
    response = client.post(f"{ADMIN}dead/replay", data={"id": str(dead), "csrf_token": csrf(html)})
    assert response.status_code == 302
    replayed = row(tracker, dead)
    assert replayed.status == OutboxStatus.PENDING.value and replayed.attempts == 0
    assert "1 dead event requeued." in page(client, f"{ADMIN}dead")


def test_replay_one_from_its_page_and_replay_all(client: FlaskClient, tracker: Tracker) -> None:
    made = seed_events(tracker)
    set_row(tracker, made["bob_login"], status=OutboxStatus.DEAD.value, attempts=25)
    html = page(client, f"{ADMIN}events/{made['bob_login']}")
    assert 'id="replay"' in html
    response = client.post(
        f"{ADMIN}events/{made['bob_login']}/replay", data={"csrf_token": csrf(html)}
    )
    assert response.status_code == 302
    assert row(tracker, made["bob_login"]).status == OutboxStatus.PENDING.value
    again = page(client, f"{ADMIN}events/{made['bob_login']}")
    assert "requeued" in again and 'id="replay"' not in again
    response = client.post(
        f"{ADMIN}events/{made['ann_login']}/replay", data={"csrf_token": csrf(again)}
    )
    assert "is not a dead letter" in page(client, f"{ADMIN}events/{made['ann_login']}")
    assert row(tracker, made["ann_login"]).status == OutboxStatus.SENT.value
    html = page(client, f"{ADMIN}dead")
    nothing = client.post(f"{ADMIN}dead/replay", data={"csrf_token": csrf(html)})
    assert nothing.status_code == 302
    assert "Select the dead events" in page(client, f"{ADMIN}dead")
    client.post(f"{ADMIN}dead/replay", data={"csrf_token": csrf(html), "all": "1"})
    assert row(tracker, made["bob_wish"]).status == OutboxStatus.PENDING.value


def test_without_a_secret_key_forms_explain_and_posts_fail(tracker: Tracker) -> None:
    made = seed_events(tracker)
    client = make_app(tracker, secret=None, admin_access=lambda: True).test_client()
    html = page(client, f"{ADMIN}dead")
    assert "app.secret_key" in html and "csrf_token" not in html
    response = client.post(f"{ADMIN}dead/replay", data={"all": "1"})
    assert response.status_code == 400 and b"secret_key" in response.data
    assert row(tracker, made["bob_wish"]).status == OutboxStatus.DEAD.value


# ---------------------------------------------------------------------- template preview


def test_preview_on_the_event_page(client: FlaskClient, tracker: Tracker) -> None:
    product = {"name": "Hair styler", "price": "341", "imageurl": "https://shop.example/i/1.jpg"}
    key = tracker.custom_event(
        "abandoned_cart",
        key_value="ann@example.com",
        params={"email": "ann@example.com", "items": {"array": [product]}},
    )
    with tracker.engine.connect() as conn:
        event_id = conn.execute(select(outbox.c.id).where(outbox.c.dedupe_key == key)).scalar()
    html = page(client, f"{ADMIN}events/{event_id}")
    template = (
        "#foreach($item in $data.get('array'))\n"
        "<p>$!item.get('name')</p><img src=\"$!item.get('ImageUrl')\">\n"
        "#end\n"
    )
    response = client.post(
        f"{ADMIN}events/{event_id}/preview", data={"csrf_token": csrf(html), "template": template}
    )
    assert response.status_code == 200
    shown = response.data.decode()
    assert 'id="problems"' in shown
    assert "&#39;imageurl&#39; is: names are case-sensitive" in shown
    assert "&lt;p&gt;Hair styler&lt;/p&gt;" in shown  # the rendered email, escaped into srcdoc
    fixed = template.replace("ImageUrl", "imageurl")
    response = client.post(
        f"{ADMIN}events/{event_id}/preview", data={"csrf_token": csrf(html), "template": fixed}
    )
    assert 'id="no-problems"' in response.data.decode()
    missing_csrf = client.post(f"{ADMIN}events/{event_id}/preview", data={"template": fixed})
    assert missing_csrf.status_code == 400


HUGE_ID = "99999999999999999999"
"""Beyond a 64-bit integer: SQLite refused to bind it (OverflowError), so the page was a 500."""
LARGEST_ID = 2**31 - 1
"""The largest id the outbox's id column holds on every database (PostgreSQL's ``integer``)."""


@pytest.mark.parametrize("page_url", [ADMIN, f"{ADMIN}dead"])
@pytest.mark.parametrize("name", ["before", "after"])
@pytest.mark.parametrize("value", [HUGE_ID, str(LARGEST_ID + 1), "%C2%B2", "12abc", "-1"])
def test_a_page_id_that_is_no_event_id_is_a_400_naming_it(
    client: FlaskClient, tracker: Tracker, page_url: str, name: str, value: str
) -> None:
    """Before: 500 for the huge id (OverflowError) and for ``²`` (``isdigit`` said yes, ``int``
    said no); other junk was silently ignored."""
    seed_events(tracker)
    html = page(client, f"{page_url}?{name}={value}", 400)
    assert f"{name}: must be an event id" in html


def test_paging_ids_up_to_the_largest_id_still_work(client: FlaskClient, tracker: Tracker) -> None:
    made = seed_events(tracker)
    assert sorted(ids_in(page(client, f"{ADMIN}?before={LARGEST_ID}"))) == sorted(made.values())
    assert ids_in(page(client, f"{ADMIN}?after={LARGEST_ID}")) == []


def test_an_event_id_beyond_any_row_is_a_404(client: FlaskClient, tracker: Tracker) -> None:
    """Before: 500 (OverflowError binding the id) for the page, the replay and the preview."""
    seed_events(tracker)
    page(client, f"{ADMIN}events/{HUGE_ID}", 404)
    page(client, f"{ADMIN}events/{LARGEST_ID}", 404)
    token = csrf(page(client, f"{ADMIN}dead"))
    for action in ("replay", "preview"):
        response = client.post(
            f"{ADMIN}events/{HUGE_ID}/{action}", data={"csrf_token": token, "template": "x"}
        )
        assert response.status_code == 404, action


def test_replay_ignores_ids_that_are_no_event_ids(client: FlaskClient, tracker: Tracker) -> None:
    """Before: 500 for a huge id or ``²`` among the selected ids."""
    made = seed_events(tracker)
    token = csrf(page(client, f"{ADMIN}dead"))
    response = client.post(
        f"{ADMIN}dead/replay",
        data={"csrf_token": token, "id": [HUGE_ID, "²", str(made["bob_wish"])]},
    )
    assert response.status_code == 302
    assert row(tracker, made["bob_wish"]).status == OutboxStatus.PENDING.value


def test_a_bad_time_filter_quotes_at_most_80_characters(client: FlaskClient) -> None:
    html = page(client, f"{ADMIN}?since=" + "x" * 5000)
    [quoted] = re.findall(r"since: &#39;(x*)&#39; is not a date", html)
    assert len(quoted) == 80

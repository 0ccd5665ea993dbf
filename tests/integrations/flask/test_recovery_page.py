"""The recovery operator page: guarded like the other operator pages; its tables and charts
show the recovery report of a real scenario (reminders delivered to a real receiver, a link
opened, orders placed, under a frozen clock); bad query values fall back to the defaults with
a note; everything shown is escaped."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, ShopEvents, Tracker
from shop_events.recovery.links import open_link
from shop_events.storage import recoveries
from shop_events.testing import Receiver

from tests.support import SettingsFactory

PAGE = "/shop-events/admin/recovery"
START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SECRET = "recovery-page-test-secret-0123456789"
TAG = "<i>"
SCRIPT = "<script>alert(1)</script>"
FLOWS = ("abandoned_cart", "abandoned_browse", "unfinished_registration")


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def shop_tracker(make_settings: SettingsFactory) -> Iterator[Tracker]:
    """Three steps at 1h/24h/72h, recovery links on, any number of sequences per contact."""
    tracker = Tracker(
        make_settings(
            abandoned_cart={"steps": ["1h", "24h", "72h"], "contact_interval": "0s"},
            recovery={
                "links": True,
                "base_url": "https://shop.example",
                "secret": SECRET,
                "attribution_window": "2d",
            },
        )
    )
    tracker.migrate()
    yield tracker
    tracker.shutdown()
    tracker.engine.dispose()


def make_app(tracker: Tracker, **options: Any) -> Flask:
    app = Flask("shop")
    app.testing = True
    app.secret_key = "recovery-page-app-secret"
    ShopEvents(app, tracker=tracker, **options)
    return app


@pytest.fixture
def client(shop_tracker: Tracker) -> FlaskClient:
    return make_app(shop_tracker, admin_access=lambda: True).test_client()


def page(client: FlaskClient, query: str = "") -> str:
    response = client.get(f"{PAGE}{query}")
    assert response.status_code == 200, response.data[:500]
    return response.data.decode()


def cart(tracker: Tracker, n: int, email: str, price: str, currency: str) -> None:
    tracker.cart_updated(
        f"cart-{n}",
        email=email,
        items=[Item(name="Lamp", price=price)],
        currency=currency,
        restore_url=f"https://shop.example/cart/{n}",
    )


def order(tracker: Tracker, n: int, email: str, price: str, currency: str) -> None:
    tracker.order_placed(
        f"order-{n}",
        email=email,
        items=[Item(name="Lamp", price=price)],
        currency=currency,
        cart_id=f"cart-{n}",
    )


def run(tracker: Tracker) -> None:
    tracker.scan()
    tracker.dispatch()


def token_of(event: dict[str, Any]) -> str:
    return urlsplit(Receiver.params(event)["cart_url"]).path.rsplit("/", 1)[-1]


def scenario(tracker: Tracker, receiver: Receiver, clock: FrozenDateTimeFactory) -> None:
    """Ann opens her first reminder's link twice and orders; Bob orders after his second
    reminder without a click; Cat gets all three steps; Dan orders with no reminder."""
    cart(tracker, 1, "ann@example.com", "40.50", "EUR")
    cart(tracker, 2, "bob@example.com", "25", "USD")
    cart(tracker, 3, "cat@example.com", "12", "EUR")
    clock.move_to(START + HOUR)
    run(tracker)
    clock.move_to(START + 2 * HOUR)
    (ann_reminder,) = [e for e in receiver.events if e["keyValue"] == "ann@example.com"]
    for _ in range(2):
        open_link(tracker.engine, tracker.settings, token_of(ann_reminder), tracker.clock())
    clock.move_to(START + 3 * HOUR)
    order(tracker, 1, "ann@example.com", "40.50", "EUR")
    clock.move_to(START + 25 * HOUR)
    run(tracker)
    clock.move_to(START + 26 * HOUR)
    order(tracker, 2, "bob@example.com", "25", "USD")
    order(tracker, 4, "dan@example.com", "99", "EUR")
    clock.move_to(START + 73 * HOUR)
    run(tracker)
    clock.move_to(START + 74 * HOUR)
    run(tracker)


def cells(html: str, flow: str) -> dict[str, str]:
    """The cells of a flow's row in the every-flow table, by their ``data-cell``."""
    row = re.search(rf'<tr id="flow-{flow}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {flow}"
    return dict(re.findall(r'data-cell="([^"]+)">([^<]*)</td>', row.group(1)))


def chart(html: str, chart_id: str) -> str:
    found = re.search(rf'<div class="card" id="{chart_id}">(.*?)</div>', html, re.S)
    assert found, f"no chart {chart_id}"
    return found.group(1)


def bars(svg: str, series: str) -> dict[str, str]:
    """A chart's bars of one series: category → the bar's tooltip."""
    return dict(
        re.findall(
            rf'<rect class="bar" data-series="{series}" data-category="([^"]+)"[^>]*>'
            r"<title>([^<]*)</title>",
            svg,
        )
    )


def notes(html: str) -> list[str]:
    return re.findall(r'<div class="flash flash-error" role="status">([^<]*)</div>', html)


# ---------------------------------------------------------------------- access


def test_the_page_is_off_without_an_access_check(shop_tracker: Tracker) -> None:
    assert make_app(shop_tracker).test_client().get(PAGE).status_code == 404


def test_the_access_check_decides_per_request(shop_tracker: Tracker) -> None:
    allowed = {"yes": False}
    client = make_app(shop_tracker, admin_access=lambda: allowed["yes"]).test_client()
    assert client.get(PAGE).status_code == 403
    allowed["yes"] = True
    assert client.get(PAGE).status_code == 200


def test_a_failing_access_check_denies(shop_tracker: Tracker) -> None:
    def broken() -> bool:
        raise RuntimeError("the shop's check is broken")

    assert make_app(shop_tracker, admin_access=broken).test_client().get(PAGE).status_code == 403


def test_the_page_has_the_headers_of_the_other_operator_pages(client: FlaskClient) -> None:
    mine, health = client.get(PAGE), client.get("/shop-events/admin/health")
    assert mine.status_code == health.status_code == 200
    for name in ("Content-Security-Policy", "Cache-Control", "X-Frame-Options", "Referrer-Policy"):
        assert mine.headers[name] == health.headers[name], name
    assert "script-src" not in mine.headers["Content-Security-Policy"]
    assert "default-src 'none'" in mine.headers["Content-Security-Policy"]


def test_the_operator_navigation_links_the_page(client: FlaskClient) -> None:
    health = client.get("/shop-events/admin/health").data.decode()
    assert f'href="{PAGE}"' in health
    assert re.search(rf'<a href="{PAGE}" class="here">Recovery</a>', page(client))


# ---------------------------------------------------------------------- the numbers


def test_the_tables_and_charts_show_the_report_of_a_real_scenario(
    client: FlaskClient,
    shop_tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
) -> None:
    scenario(shop_tracker, receiver, clock)
    html = page(client, "?days=7")

    # independently, from the receiver's log
    reminders = [
        (q.time, q.json)
        for q in receiver.requests
        if q.status == 200 and q.json["eventTypeKey"] == "abandoned_cart"
    ]
    by_step = Counter(int(Receiver.params(e)["step"]) for _, e in reminders)
    by_day = Counter(t.astimezone(UTC).date().isoformat() for t, _ in reminders)
    assert by_step == {1: 3, 2: 2, 3: 1}

    row = cells(html, "abandoned_cart")
    assert row == {
        "abandoned": "3",
        "delivered-1": str(by_step[1]),
        "delivered-2": str(by_step[2]),
        "delivered-3": str(by_step[3]),
        "clicks": "1",  # Ann's link, opened twice
        "recovered_orders": "2",  # Ann and Bob; Dan had no reminder
        "revenue-EUR": "40.50",
        "revenue-USD": "25",
        "recovery_rate": "66.67%",
    }
    # … and the report for the same period says the same
    today = START.date() + timedelta(days=3)
    report = shop_tracker.recovery_report(
        since=datetime.combine(today - timedelta(days=6), datetime.min.time(), UTC),
        until=datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC),
    )
    flow = report.cart
    assert row["abandoned"] == str(flow.abandoned)
    assert {k: row[f"delivered-{k}"] for k in (1, 2, 3)} == {
        k: str(v) for k, v in flow.reminders_delivered.items()
    }
    assert row["clicks"] == str(flow.clicks)
    assert row["recovered_orders"] == str(flow.recovered_orders)
    assert flow.recovered_revenue == {"EUR": Decimal("40.50"), "USD": Decimal("25")}
    assert row["recovery_rate"] == f"{flow.recovery_rate:.2%}"
    assert cells(html, "abandoned_browse")["recovered_orders"] == "0"

    # the daily chart: one bar per day and series, each with the day's number
    activity = chart(html, "chart-activity")
    delivered = bars(activity, "delivered")
    days = [(today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    assert list(delivered) == days
    for day in days:
        assert delivered[day] == f"{day}: Reminders delivered {by_day.get(day, 0)}"
    assert bars(activity, "clicks")[START.date().isoformat()].endswith("Clicks 1")
    recovered = bars(activity, "recovered")
    assert recovered["2026-11-26"].endswith("Recovered orders 1")
    assert recovered["2026-11-27"].endswith("Recovered orders 1")
    assert 'role="img"' in activity and "<title>Reminders delivered, clicks" in activity
    assert "Reminders delivered: 6" in activity  # the legend's total

    # revenue: a chart per currency, the order on its day
    assert bars(chart(html, "chart-revenue-1"), "revenue")["2026-11-26"].endswith("(EUR) 40.50")
    assert bars(chart(html, "chart-revenue-2"), "revenue")["2026-11-27"].endswith("(USD) 25")

    # the funnel, step by step
    funnel = chart(html, "chart-funnel")
    assert list(bars(funnel, "delivered").values()) == [
        "Step 1 · 1h: Delivered 3",
        "Step 2 · 1d: Delivered 2",
        "Step 3 · 3d: Delivered 1",
    ]
    assert bars(funnel, "clicks")["Step 1 · 1h"] == "Step 1 · 1h: Clicked 1"
    assert [t.rsplit(" ", 1)[-1] for t in bars(funnel, "recovered").values()] == ["1", "1", "0"]


def test_the_summary_shows_the_chosen_flow(
    client: FlaskClient,
    shop_tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
) -> None:
    scenario(shop_tracker, receiver, clock)
    html = page(client)
    assert re.search(r'id="total-delivered">6<', html)
    assert re.search(r'id="total-recovered">2<', html)
    assert "40.50 EUR<br>25 USD" in html
    browse = page(client, "?flow=abandoned_browse")
    assert re.search(r'id="total-delivered">0<', browse)
    assert '<option value="abandoned_browse" selected>' in browse


def test_a_period_without_reminders_draws_empty_charts(client: FlaskClient) -> None:
    html = page(client)
    assert html.count("Nothing in this period") == 3  # activity, revenue, funnel
    assert cells(html, "abandoned_cart")["recovery_rate"] == "0.00%"


# ---------------------------------------------------------------------- query values


@pytest.mark.parametrize("days", [1, 7, 400])
def test_days_sets_the_period_one_bar_per_day(client: FlaskClient, days: int) -> None:
    html = page(client, f"?days={days}")
    assert notes(html) == []
    assert len(bars(chart(html, "chart-activity"), "delivered")) == days
    assert len(bars(chart(html, "chart-revenue-1"), "revenue")) == days


def test_the_period_ends_today_and_is_thirty_days_by_default(
    client: FlaskClient, clock: FrozenDateTimeFactory
) -> None:
    html = page(client)
    days = list(bars(chart(html, "chart-activity"), "delivered"))
    assert len(days) == 30
    assert days[-1] == START.date().isoformat()
    assert days[0] == (START.date() - timedelta(days=29)).isoformat()


@pytest.mark.parametrize(
    "value", ["0", "401", "-5", "7.5", "abc", "1e2", "٣", "9" * 60, "%2B7", "0x10", "30days"]
)
def test_a_bad_days_value_shows_the_default_with_a_note(client: FlaskClient, value: str) -> None:
    html = page(client, f"?days={value}")
    (note,) = notes(html)
    assert note.startswith("days: ") and "from 1 to 400" in note and "last 30 days" in note
    assert len(bars(chart(html, "chart-activity"), "delivered")) == 30


def test_a_bad_flow_value_shows_the_abandoned_cart_with_a_note(client: FlaskClient) -> None:
    html = page(client, "?flow=abandoned_carts&days=3")
    (note,) = notes(html)
    assert note.startswith("flow: ") and "abandoned_browse" in note
    assert '<option value="abandoned_cart" selected>' in html
    assert len(bars(chart(html, "chart-activity"), "delivered")) == 3


@pytest.mark.parametrize("flow", FLOWS)
def test_every_flow_can_be_chosen(client: FlaskClient, flow: str) -> None:
    html = page(client, f"?flow={flow}")
    assert notes(html) == []
    assert f'<option value="{flow}" selected>' in html


def test_an_empty_query_value_is_the_default_without_a_note(client: FlaskClient) -> None:
    html = page(client, "?days=&flow=")
    assert notes(html) == []
    assert len(bars(chart(html, "chart-activity"), "delivered")) == 30


# ---------------------------------------------------------------------- escaping


def test_everything_shown_is_escaped(
    client: FlaskClient,
    shop_tracker: Tracker,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
) -> None:
    cart(shop_tracker, 1, "ann@example.com", "10", "EUR")
    clock.move_to(START + HOUR)
    run(shop_tracker)
    # a currency the capture would refuse (it fits the column: three characters), written
    # straight into the table: the page must not trust what is stored
    with shop_tracker.engine.begin() as conn:
        assert recoveries.credit(
            conn,
            order_id="order-x",
            email="ann@example.com",
            cart_id=None,
            revenue="9.99",
            currency=TAG,
            now=shop_tracker.clock(),
            window=timedelta(days=1),
        )
    html = page(client, f"?days={SCRIPT}&flow=<b onmouseover=x>")
    assert "<script>" not in html and "<b onmouseover" not in html and "<i>" not in html
    assert "&lt;i&gt;" in html
    (days_note, flow_note) = notes(html)
    assert "&lt;script&gt;" in days_note and "&lt;b onmouseover=x&gt;" in flow_note
    revenue = chart(html, "chart-revenue-1")
    assert "Recovered revenue per day, &lt;i&gt;" in revenue
    assert "9.99" in bars(revenue, "revenue")[START.date().isoformat()]

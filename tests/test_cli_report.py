"""``shop-events report``: the recovery report on the command line, as JSON and as tables, over
a period given as a duration or as dates; the same figures as ``tracker.recovery_report``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time
from shop_events import Item, Settings, Tracker
from shop_events.cli import cli, flask_group
from shop_events.recovery.links import open_link
from shop_events.testing import Receiver

from tests.support import RECOVERY_START as START
from tests.support import REPORT_KEYS

NOW = START + timedelta(days=2)
"""When the report is asked for: every reminder and order below lies in the last 30 days."""
HOUR = timedelta(hours=1)
SECRET = "cli-report-secret-0123456789"


def write_config(path: Path, receiver: Receiver) -> Path:
    path.write_text(
        f"""
[api]
base_url = "{receiver.base_url}"
key = "{receiver.api_key}"

[database]
url = "sqlite:///events.db"

[scheduler]
enabled = false

[delivery]
threads = 2

[abandoned_cart]
steps = ["1h", "24h"]
contact_interval = "0s"

[recovery]
links = true
base_url = "https://shop.example"
secret = "{SECRET}"
""",
        encoding="utf-8",
    )
    return path


pytestmark = pytest.mark.usefixtures("no_shop_events_environment")


@pytest.fixture
def config(tmp_path: Path, receiver: Receiver) -> Path:
    return write_config(tmp_path / "shop.toml", receiver)


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(config: Path) -> Invoke:
    """Run ``shop-events --config <config> ARGS`` with the clock at :data:`NOW`."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        with freeze_time(NOW):
            return runner.invoke(cli, ["--config", str(config), *args])

    return run


@pytest.fixture
def tracker(config: Path) -> Iterator[Tracker]:
    made = Tracker(Settings.from_file(config, env={}))
    yield made
    made.shutdown()
    made.engine.dispose()


def token_of(receiver: Receiver, email: str) -> str:
    """The token in the link of the last reminder ``email`` got, as the receiver saw it."""
    mine = [e for e in receiver.events if e["keyValue"] == email]
    return urlsplit(Receiver.params(mine[-1])["cart_url"]).path.rsplit("/", 1)[-1]


@pytest.fixture
def history(tracker: Tracker, receiver: Receiver) -> Tracker:
    """Three abandoned carts reminded in two steps: Ann opens her link and buys after step 1
    (EUR 30), Bob buys after step 2 without a click (USD 20), Cid never comes back; Dee orders
    without any reminder (not recovered)."""
    tracker.migrate()
    with freeze_time(START) as clock:
        for n, (name, price, currency) in enumerate(
            [("ann", 30, "EUR"), ("bob", 20, "USD"), ("cid", 15, "EUR")]
        ):
            tracker.cart_updated(
                f"cart-{n}",
                email=f"{name}@example.com",
                items=[Item(name="Lamp", price=price)],
                currency=currency,
                restore_url=f"https://shop.example/cart/{n}",
            )
        clock.move_to(START + HOUR)
        tracker.scan()
        tracker.dispatch()
        clock.move_to(START + 2 * HOUR)
        for _ in range(2):  # a link opened twice is one click
            token = token_of(receiver, "ann@example.com")
            open_link(tracker.engine, tracker.settings, token, tracker.clock())
        tracker.order_placed(
            "order-ann",
            email="ann@example.com",
            items=[Item(name="Lamp", price=30)],
            currency="EUR",
            cart_id="cart-0",
        )
        clock.move_to(START + 25 * HOUR)
        tracker.scan()
        tracker.dispatch()
        clock.move_to(START + 26 * HOUR)
        tracker.order_placed(
            "order-bob",
            email="bob@example.com",
            items=[Item(name="Lamp", price=20)],
            currency="USD",
            cart_id="cart-1",
        )
        tracker.order_placed(
            "order-dee", email="dee@example.com", items=[Item(name="Vase", price=99)]
        )
        tracker.dispatch()
    return tracker


def report_json(invoke: Invoke, *args: str) -> dict[str, object]:
    result = invoke("report", "--json", *args)
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.stdout)  # nothing else on standard output
    return parsed


def test_json_has_the_issues_keys_and_equals_the_trackers_report(
    invoke: Invoke, history: Tracker
) -> None:
    printed = report_json(invoke)

    assert set(printed) == REPORT_KEYS
    with freeze_time(NOW):
        assert printed == history.recovery_report().as_json()
    assert printed["abandoned"] == 3
    assert printed["reminders_delivered"] == {"1": 3, "2": 2}
    assert printed["clicks"] == 1
    assert printed["recovered_orders"] == 2
    assert printed["recovered_revenue"] == {"EUR": "30", "USD": "20"}
    assert printed["recovery_rate"] == round(2 / 3, 4)
    flows = printed["flows"]
    assert isinstance(flows, dict)
    assert set(flows) == {"abandoned_cart", "abandoned_browse", "unfinished_registration"}
    assert {k: v for k, v in flows["abandoned_cart"].items()} == {
        k: v for k, v in printed.items() if k != "flows"
    }
    assert flows["abandoned_browse"]["abandoned"] == 0
    daily = printed["daily"]
    assert isinstance(daily, list)
    assert len(daily) == 31  # every day the 30 days touch
    assert daily[-3]["date"] == "2026-11-26"
    assert daily[-3]["abandoned"] == 3 and daily[-3]["recovered_revenue"] == {"EUR": "30"}
    assert daily[-2]["recovered_revenue"] == {"USD": "20"}


def test_since_takes_a_duration_back_from_until(invoke: Invoke, history: Tracker) -> None:
    # the last 12 hours hold nothing: Bob's order was 22 hours ago
    assert report_json(invoke, "--since", "12h")["recovered_orders"] == 0
    recent = report_json(invoke, "--since", "30h")
    assert recent["recovered_orders"] == 1
    assert recent["reminders_delivered"] == {"2": 2}
    # a duration back from --until, not from now
    day_one = report_json(invoke, "--since", "1d", "--until", "2026-11-27")
    assert day_one["abandoned"] == 3 and day_one["recovered_orders"] == 1
    assert (
        day_one
        == history.recovery_report(since=START - 10 * HOUR, until=START + 14 * HOUR).as_json()
    )


def test_since_and_until_take_iso_dates_and_date_times_in_utc(
    invoke: Invoke, history: Tracker
) -> None:
    first_day = report_json(invoke, "--since", "2026-11-26", "--until", "2026-11-27")
    midnight = datetime(2026, 11, 26, tzinfo=UTC)
    expected = history.recovery_report(since=midnight, until=midnight + timedelta(days=1))
    assert first_day == expected.as_json()
    assert first_day["recovered_revenue"] == {"EUR": "30"}
    assert [day["date"] for day in first_day["daily"]] == ["2026-11-26"]  # type: ignore[union-attr]

    # Ann's order at 12:00 UTC is 14:00 at +02:00: a period starting then still holds it
    with_offset = report_json(
        invoke, "--since", "2026-11-26T14:00+02:00", "--until", "2026-11-26T12:00:01"
    )
    assert with_offset["recovered_orders"] == 1
    naive_is_utc = report_json(invoke, "--since", "2026-11-26T12:00:01")
    assert naive_is_utc["recovered_revenue"] == {"USD": "20"}


@pytest.mark.parametrize(
    ("args", "option", "rule"),
    [
        (("--since", "yesterday"), "--since", "a duration back from --until such as '30d'"),
        (("--since", "0s"), "--since", "a duration must be longer than 0s"),
        (("--since", "-3d"), "--since", "a duration back from --until"),
        (("--since", "2026-02-30"), "--since", "is not an ISO date or date-time in UTC"),
        (("--until", "30d"), "--until", "is not an ISO date or date-time in UTC"),
        (("--until", "2026-11-26T25:00"), "--until", "is not an ISO date or date-time in UTC"),
        (
            ("--since", "2026-12-01", "--until", "2026-11-01"),
            "--since/--until",
            "the period must start before it ends",
        ),
        (("--since", "2026-12-29"), "--since/--until", "the period must start before it ends"),
    ],
    ids=[
        "word",
        "zero",
        "negative",
        "no-such-day",
        "until-duration",
        "hour-25",
        "reversed",
        "future",
    ],
)
def test_a_bad_period_is_a_usage_error_naming_the_option_and_the_rule(
    invoke: Invoke, history: Tracker, args: tuple[str, ...], option: str, rule: str
) -> None:
    result = invoke("report", "--json", *args)
    assert result.exit_code == 2
    assert f"Invalid value for {option}" in result.output or (
        f"Invalid value for '{option}'" in result.output
    )
    assert rule in result.output
    assert result.stdout == ""


def test_the_tables_show_each_flows_numbers_and_the_carts_days(
    invoke: Invoke, history: Tracker, config: Path
) -> None:
    result = invoke("report")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    database = config.parent / "events.db"
    assert lines[0] == (
        f"recovery from 2026-10-29 10:00 to 2026-11-28 10:00 UTC (database: sqlite:///{database})"
    )
    cart = lines[lines.index("abandoned_cart") + 1 : lines.index("abandoned_cart") + 7]
    assert [line.split()[0] for line in cart] == [
        "sequences",
        "reminders",
        "clicks",
        "recovered",
        "recovered",
        "recovery",
    ]
    assert cart[0].split()[-1] == "3"
    assert cart[1].endswith("step 1: 3, step 2: 2")
    assert cart[2].split()[-1] == "1"
    assert cart[3].endswith("2 (1 after a click on the link)")
    assert cart[4].endswith("EUR 30, USD 20")
    assert cart[5].endswith("66.7%")
    browse = lines[lines.index("abandoned_browse") + 1 : lines.index("abandoned_browse") + 7]
    assert browse[1].endswith("none") and browse[4].endswith("-") and browse[5].endswith("0.0%")
    assert "unfinished_registration" in lines

    days = lines[lines.index("abandoned_cart by day (UTC)") + 1 :]
    assert days[0].split() == ["day", "started", "delivered", "clicks", "recovered", "revenue"]
    assert len(days) == 1 + 31
    by_day = {line.split()[0]: line.split()[1:] for line in days[1:]}
    assert by_day["2026-11-26"] == ["3", "3", "1", "1", "EUR", "30"]
    assert by_day["2026-11-27"] == ["0", "2", "0", "1", "USD", "20"]
    assert by_day["2026-11-28"] == ["0", "0", "0", "0", "-"]


def test_without_the_tables_it_says_to_migrate_and_creates_nothing(
    invoke: Invoke, config: Path
) -> None:
    result = invoke("report")
    assert result.exit_code == 1
    database = config.parent / "events.db"
    assert result.output.splitlines() == [
        f"Error: sqlite:///{database}: the plugin's tables are missing (there is no database "
        f"file {database}): run `shop-events migrate` first"
    ]
    assert not database.exists()


def test_the_flask_group_has_the_command_too() -> None:
    assert flask_group.commands["report"] is cli.commands["report"]

"""``shop-events forget EMAIL [--platform] [--yes]`` and ``shop-events export EMAIL [-o FILE]``,
and the same in the ``flask shop-events`` group.

Runs on SQLite, PostgreSQL and MariaDB; the receiver is real.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker
from shop_events.cli import cli, flask_group
from shop_events.testing import Receiver

from tests.support import SettingsFactory, outbox_rows, trackers, write_config

ANN = "ann@example.com"
LAMP = Item(name="Lamp", price="30")
Invoke = Callable[..., Result]


@pytest.fixture
def tracker(make_settings: SettingsFactory) -> Iterator[Tracker]:
    with trackers(make_settings) as make:
        yield make()


@pytest.fixture
def invoke(
    tracker: Tracker,
    database_url: str,
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> Invoke:
    """Runs ``shop-events --config FILE …`` on the tracker's database."""
    for name in ("ERASE_ON_PLATFORM", "SUPPRESS_AFTER_FORGET"):
        monkeypatch.delenv(f"SHOP_EVENTS_PRIVACY_{name}", raising=False)
    config = write_config(
        tmp_path / "shop.toml",
        {
            "api": {"base_url": receiver.base_url, "key": receiver.api_key},
            "database": {"url": database_url},
            "scheduler": {"enabled": False},
        },
    )

    def run(*args: str, answer: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config), *args], input=answer)

    return run


def test_forget_with_yes_erases_and_prints_the_rows_per_table(
    tracker: Tracker, invoke: Invoke, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP])
    tracker.logged_in(ANN)
    result = invoke("forget", " Ann@Example.com ", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"forgot {ANN}: 2 rows",
        "  shop_events_carts   1",
        "  shop_events_outbox  1",
        "marketing to this address is suppressed until it opts in again",
    ]
    assert outbox_rows(tracker.engine) == []


def test_forget_asks_first_and_a_no_erases_nothing(
    tracker: Tracker, invoke: Invoke, clock: FrozenDateTimeFactory
) -> None:
    tracker.logged_in(ANN)
    refused = invoke("forget", ANN, answer="n\n")
    assert refused.exit_code == 1
    assert f"Erase everything held about {ANN}? This cannot be undone" in refused.output
    assert len(outbox_rows(tracker.engine)) == 1
    agreed = invoke("forget", ANN, answer="y\n")
    assert agreed.exit_code == 0, agreed.output
    assert f"forgot {ANN}: 1 row\n" in agreed.output
    assert outbox_rows(tracker.engine) == []


def test_forget_platform_queues_the_platform_erasure_and_says_when_it_goes(
    tracker: Tracker, invoke: Invoke, clock: FrozenDateTimeFactory
) -> None:
    result = invoke("forget", ANN, "--platform", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [
        f"nothing was held about {ANN}",
        "platform erasure queued: DELETE v1/contact?externalCustomerId=…&erase=true, due in 2m",
    ]
    [row] = outbox_rows(tracker.engine)
    assert (row.api_path, row.key_value, row.status) == ("v1/contact", ANN, "pending")


def test_forget_refuses_a_bad_address_before_asking(invoke: Invoke) -> None:
    result = invoke("forget", "not an address", answer="y\n")
    assert result.exit_code == 2
    assert "EMAIL" in result.output and "is not a valid email address" in result.output
    assert "Erase everything" not in result.output


def test_export_prints_the_document_or_writes_it_for_its_owner_only(
    tracker: Tracker, invoke: Invoke, tmp_path: Path, clock: FrozenDateTimeFactory
) -> None:
    tracker.cart_updated("cart-1", email=ANN, items=[LAMP])
    tracker.opted_in(ANN, source="checkout checkbox")
    printed = invoke("export", ANN.upper())
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == tracker.export(ANN)
    file = tmp_path / "ann.json"
    written = invoke("export", ANN, "-o", str(file))
    assert written.exit_code == 0, written.output
    assert written.stdout == ""
    assert json.loads(file.read_text(encoding="utf-8")) == tracker.export(ANN)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_the_flask_group_has_forget_and_export_too() -> None:
    for name in ("forget", "export"):
        assert flask_group.commands[name] is cli.commands[name]

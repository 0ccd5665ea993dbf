"""``shop-events purge``: sent and superseded events older than N days go, in batches; dead
letters only with ``--dead``; pending events and anything newer always stay."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from shop_events import Item, Settings, Tracker
from shop_events.cli import cli
from shop_events.testing import Receiver, Reply

from tests.support import add_events, base_sections, outbox_rows, write_config

pytestmark = pytest.mark.usefixtures("no_shop_events_environment")


def kinds(shop: Tracker) -> Counter[tuple[str, str]]:
    """(age, status) of every outbox row; age is ``old`` for rows made 40 days ago."""
    cutoff = datetime.now(UTC) - timedelta(days=30)
    return Counter(
        ("old" if row.created_at < cutoff else "new", row.status)
        for row in outbox_rows(shop.engine)
    )


def test_purge_deletes_old_sent_and_superseded_and_dead_only_when_asked(
    tmp_path: Path, receiver: Receiver, database_url: str
) -> None:
    sections = base_sections(receiver, database_url)
    sections["scheduler"] = {"enabled": False}
    sections["retention"] = {"batch": 2}  # several batches even for these few rows
    config = write_config(tmp_path / "shop.toml", sections)
    settings = Settings.from_file(config, env={})
    at = [datetime.now(UTC) - timedelta(days=40)]
    old = Tracker(settings, clock=lambda: at[0])
    old.migrate()
    new = Tracker(settings)
    item = Item(name="Hair styler", price="341", url="https://shop.example/p/1")

    for i in range(2):  # two reminders superseded by orders, and the two orders sent
        old.cart_updated(f"cart-{i}", email=f"buyer-{i}@example.com", items=[item])
    at[0] += timedelta(hours=1)
    assert old.scan().abandoned == 2
    for i in range(2):
        old.order_placed(f"order-{i}", email=f"buyer-{i}@example.com", items=[item])
    add_events(old, 3, "old-sent")
    assert old.dispatch().sent == 5
    receiver.script(Reply(400, "bad"), Reply(400, "bad"))
    add_events(old, 2, "old-dead")
    assert old.dispatch().dead == 2
    add_events(new, 3, "new-sent")
    assert new.dispatch().sent == 3
    receiver.script(Reply(400, "bad"))
    add_events(new, 1, "new-dead")
    assert new.dispatch().dead == 1
    add_events(old, 2, "old-pending")  # never sent: an outage, say; purge must not touch them
    add_events(new, 1, "new-pending")
    assert kinds(new) == {
        ("old", "sent"): 5,
        ("old", "superseded"): 2,
        ("old", "dead"): 2,
        ("old", "pending"): 2,
        ("new", "sent"): 3,
        ("new", "dead"): 1,
        ("new", "pending"): 1,
    }

    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)

    first = run("purge", "--older-than", "30d")
    print(f"\n[purge] {first.output.strip()}")
    assert first.exit_code == 0, first.output
    assert "deleted 7 events (sent, superseded) older than 30d" in first.output
    assert kinds(new) == {
        ("old", "dead"): 2,
        ("old", "pending"): 2,
        ("new", "sent"): 3,
        ("new", "dead"): 1,
        ("new", "pending"): 1,
    }

    again = run("purge", "--older-than", "30d")
    assert "deleted 0 events" in again.output

    dead = run("purge", "--older-than", "30d", "--dead")
    print(f"[purge --dead] {dead.output.strip()}")
    assert dead.exit_code == 0, dead.output
    assert "deleted 2 events (sent, superseded, dead) older than 30d" in dead.output
    assert kinds(new) == {
        ("old", "pending"): 2,
        ("new", "sent"): 3,
        ("new", "dead"): 1,
        ("new", "pending"): 1,
    }

    for bad in ("soon", "0s"):
        refused = run("purge", "--older-than", bad)
        assert refused.exit_code == 2
        assert "--older-than" in refused.output
    default = run("purge")  # retention.days, 30 by default
    assert default.exit_code == 0 and "deleted 0 events (sent, superseded) older than 30d" in (
        default.output
    )
    assert sum(kinds(new).values()) == 7
    old.engine.dispose()
    new.engine.dispose()

"""On SQLite, once ``tracker.forget`` returns, the address's bytes are in none of the database's
files: the plugin's connections zero what they delete (``secure_delete``), and the WAL is
checkpointed and truncated, with the tracker still running and its pool's connections open.

SQLite only (PostgreSQL and MariaDB: ``test_forget.py`` reads every text column instead).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Settings, Tracker
from shop_events.storage import capture_errors, engines
from shop_events.storage.capture_errors import CaptureError
from shop_events.testing import Receiver

from tests.support import API_KEY, PRIVACY_SECTIONS, held_everywhere, queue_pending

ANN = "ann.erased@example.com"
BOB = "bob.kept@example.com"
OTHERS = 150
"""Other shoppers, so that every table and index spans several pages."""


@pytest.fixture
def database(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "shop_events.db"
    shutil.copyfile(sqlite_template, path)
    return path


@pytest.fixture
def tracker(database: Path, receiver: Receiver) -> Iterator[Tracker]:
    """A tracker on the SQLite file, jobs off, sending to the receiver."""
    sections: dict[str, dict[str, Any]] = {
        "api": {"base_url": receiver.base_url, "key": API_KEY},
        "database": {"url": f"sqlite:///{database}"},
        "scheduler": {"enabled": False},
        "delivery": {"threads": 2},
        **PRIVACY_SECTIONS,
    }
    made = Tracker(Settings.load(sections))
    yield made
    made.shutdown()
    made.engine.dispose()


def traces(database: Path, email: str) -> dict[str, int]:
    """How often each file of the database holds ``email`` (as is, in any case, or
    percent-encoded): the file, its ``-wal`` and its ``-shm``."""
    forms = [email, quote(email, safe="")]
    pattern = re.compile(b"|".join(re.escape(form.encode()) for form in forms), re.IGNORECASE)
    found = {}
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{database}{suffix}")
        found[file.name] = len(pattern.findall(file.read_bytes())) if file.exists() else 0
    return found


def crowd(tracker: Tracker) -> None:
    """Other shoppers' carts and events, some changed more than once."""
    for n in range(OTHERS):
        email = f"shopper{n}@example.org"
        items = [Item(name=f"Product {n}", price=n + 1, url=f"https://shop.example/p/{n}")]
        tracker.cart_updated(f"other-{n}", email=email, items=items)
        if n % 3 == 0:
            tracker.cart_updated(f"other-{n}", email=email, items=[*items, *items])
        tracker.logged_in(email)


def test_no_byte_of_the_address_is_left_in_the_database_files(
    tracker: Tracker, database: Path, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    crowd(tracker)
    held_everywhere(tracker, receiver, clock, ANN, "a")
    held_everywhere(tracker, receiver, clock, BOB, "b")
    queue_pending(tracker, ANN)
    queue_pending(tracker, BOB)
    now = tracker.clock()
    with tracker.engine.begin() as conn:
        error = CaptureError("customer", "email", 1, now, now, None, f"{ANN.upper()} refused")
        capture_errors.record(conn, [error])
    tracker.dispatch()  # pool connections used; the reminders' rows rewritten
    reader = sqlite3.connect(database)  # another process's connection, idle between reads
    try:
        assert reader.execute("SELECT count(*) FROM shop_events_outbox").fetchone()[0] > OTHERS
        assert sum(traces(database, ANN).values()) > 0
        forgotten = tracker.forget(ANN.title())
        assert forgotten.complete
        assert sum(forgotten.values()) > 20
        assert traces(database, ANN) == {
            "shop_events.db": 0,
            "shop_events.db-wal": 0,
            "shop_events.db-shm": 0,
        }
        assert traces(database, BOB)["shop_events.db"] > 0
        assert reader.execute("SELECT count(*) FROM shop_events_carts").fetchone()[0] > OTHERS
    finally:
        reader.close()


def test_a_delivered_platform_erasure_leaves_no_byte_of_the_address(
    tracker: Tracker, database: Path, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    crowd(tracker)
    held_everywhere(tracker, receiver, clock, ANN, "a")
    forgotten = tracker.forget(ANN, platform=True)
    assert forgotten.complete and forgotten.platform_erasure
    assert sum(traces(database, ANN).values()) > 0  # the erasure's row, until delivered
    clock.tick(tracker.settings.delivery.lease)
    assert tracker.dispatch().sent == 1
    assert receiver.erasures == [{"externalCustomerId": ANN, "erase": "true"}]
    assert sum(traces(database, ANN).values()) == 0


def test_a_reader_holding_the_wal_leaves_the_erasure_incomplete_until_forgotten_again(
    tracker: Tracker,
    database: Path,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engines, "CHECKPOINT_WAIT_MS", 1)
    held_everywhere(tracker, receiver, clock, ANN, "a")
    reader = sqlite3.connect(database, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM shop_events_outbox").fetchone()
        forgotten = tracker.forget(ANN)
        assert not forgotten.complete
        assert forgotten["shop_events_outbox"] > 0
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert tracker.export(ANN)["events"] == []
    again = tracker.forget(ANN)
    assert again.complete
    assert set(again.values()) == {0}
    assert sum(traces(database, ANN).values()) == 0


def test_every_connection_of_the_plugin_zeroes_what_it_deletes(tracker: Tracker) -> None:
    first, second = tracker.engine.raw_connection(), tracker.engine.raw_connection()
    try:
        for conn in (first, second):
            assert conn.cursor().execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        first.close()
        second.close()


def test_checkpointing_a_server_database_has_nothing_to_do() -> None:
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert engines.checkpoint(engine) is True  # it never connects

"""The shop's own SQLite file, shared with the plugin: it is switched to WAL for good, so a
backup is taken with SQLite's online backup, not by copying the file (as the README says)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from shop_events.config import DatabaseSettings
from shop_events.storage.engines import make_engine
from sqlalchemy import Engine, create_engine

USERS = 21


def journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def users_in(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM shop_user").fetchone()[0])


@pytest.fixture
def shop_file(tmp_path: Path) -> Path:
    """A shop's database as the shop made it: SQLite's default rollback journal."""
    path = tmp_path / "shop.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE shop_user (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
        conn.commit()
    assert journal_mode(path) == "delete"
    return path


@pytest.fixture
def plugin_engine(shop_file: Path) -> Iterator[Engine]:
    """The plugin's engine on the shop's file, connected once."""
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{shop_file}"))
    with engine.connect():
        pass
    yield engine
    engine.dispose()


def test_the_shops_file_is_switched_to_wal_and_stays_in_it(
    shop_file: Path, plugin_engine: Engine
) -> None:
    plugin_engine.dispose()  # even with the plugin gone, the mode is the file's
    assert journal_mode(shop_file) == "wal"


def test_a_copy_of_the_file_alone_misses_commits_that_the_online_backup_keeps(
    shop_file: Path, plugin_engine: Engine, tmp_path: Path
) -> None:
    shop = create_engine(f"sqlite:///{shop_file}")  # the shop's own engine, as it has it
    try:
        for n in range(USERS):
            with shop.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO shop_user (email) VALUES (?)", (f"user{n}@example.com",)
                )
        assert users_in(shop_file) == USERS

        # While the shop runs, its recent commits are in shop.db-wal: `cp shop.db` misses them.
        copied = tmp_path / "copied.db"
        shutil.copyfile(shop_file, copied)
        assert users_in(copied) < USERS

        # The README's way: SQLite's online backup (`sqlite3 shop.db ".backup copy.db"` is the
        # same API) copies every committed transaction, consistently, while the shop runs.
        backup = tmp_path / "backup.db"
        with closing(sqlite3.connect(shop_file)) as source, closing(sqlite3.connect(backup)) as to:
            source.backup(to)
        assert users_in(backup) == USERS
        vacuumed = tmp_path / "vacuumed.db"
        with closing(sqlite3.connect(shop_file)) as source:
            source.execute("VACUUM INTO ?", (str(vacuumed),))
        assert users_in(vacuumed) == USERS
    finally:
        shop.dispose()

    # With every process stopped, the last connection to close writes the WAL back: a copy of
    # the file alone is complete again.
    plugin_engine.dispose()
    assert not shop_file.with_name("shop.db-wal").exists()
    after_stop = tmp_path / "after_stop.db"
    shutil.copyfile(shop_file, after_stop)
    assert users_in(after_stop) == USERS

"""Shared fixtures: a real receiver on 127.0.0.1, settings pointing at it, a migrated tracker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import freezegun
import pytest
from shop_events import Settings, Tracker
from shop_events.testing import Receiver

from tests import mysql, postgres
from tests.support import API_KEY, SettingsFactory, migrate_database

# pytest times setup, call and teardown with the clock functions bound in ``_pytest.timing``;
# left to freezegun, a fixture that freezes time reports ~1.8e9 s under ``--durations``. Only that
# module: ignoring all of ``_pytest`` would unfreeze ``time.time()`` called from a test body,
# since freezegun gives real time to any caller within five frames of an ignored module.
freezegun.configure(extend_ignore_list=["_pytest.timing"])


@pytest.fixture
def no_shop_events_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``SHOP_EVENTS_*`` variable of the machine running the tests reaches the settings (the
    command-line tests load them from the environment as the commands do)."""
    for name in list(os.environ):
        if name.startswith("SHOP_EVENTS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The platform's endpoints on a free loopback port, expecting :data:`API_KEY`."""
    with Receiver(api_key=API_KEY) as running:
        yield running


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the whole run (skips locally if not installed)."""
    postgres.require()
    with postgres.cluster(in_ram=True) as url:
        yield url


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """A database of the cluster migrated once per run, copied for each test."""
    return postgres.migrated_template(pg_server)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per run, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "shop_events.db"
    migrate_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[str]:
    """A throwaway MariaDB server for the whole run (fails if MariaDB is not installed)."""
    mysql.require()
    with mysql.server(in_ram=True) as url:
        yield url


@pytest.fixture(scope="session")
def mysql_template(mysql_server: str) -> str:
    """A database of the MariaDB server migrated once per run, copied for each test."""
    return mysql.migrated_template(mysql_server)


SERVER_ENGINES = [
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]
ENGINES = ["sqlite", *SERVER_ENGINES]


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that stores anything runs on the SQLite default, on PostgreSQL and on
    MariaDB, in a database already at the newest migration (a copy of one migrated once per
    run)."""
    if request.param == "sqlite":
        path = tmp_path / "shop_events.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    if request.param == "mysql":
        return mysql.new_database(
            request.getfixturevalue("mysql_server"),
            template=request.getfixturevalue("mysql_template"),
        )
    return postgres.new_database(
        request.getfixturevalue("pg_server"), template=request.getfixturevalue("pg_template")
    )


@pytest.fixture(params=ENGINES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on SQLite, PostgreSQL and MariaDB, for the tests of the migrations."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop_events.db'}"
    if request.param == "mysql":
        return mysql.new_database(request.getfixturevalue("mysql_server"))
    return postgres.new_database(request.getfixturevalue("pg_server"))


@pytest.fixture
def make_settings(database_url: str, receiver: Receiver) -> SettingsFactory:
    """Settings on a SQLite file in ``tmp_path`` sending to ``receiver``; sections override."""

    def make(**sections: dict[str, Any]) -> Settings:
        data: dict[str, dict[str, Any]] = {
            "api": {"base_url": receiver.base_url, "key": API_KEY},
            "database": {"url": database_url},
            "scheduler": {"enabled": False},
            "delivery": {"threads": 2},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return Settings.load(data)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    """Default test settings."""
    return make_settings()


@pytest.fixture
def tracker(settings: Settings) -> Iterator[Tracker]:
    """A migrated tracker on :func:`settings`."""
    made = Tracker(settings)
    made.migrate()
    yield made
    made.shutdown()
    made.engine.dispose()

"""``ShopEvents`` in a shop that has its own extensions and commands: Flask-SQLAlchemy with a
relative SQLite path, Flask-Migrate's autogenerate, Flask-WTF's ``CSRFProtect``, ``flask``
commands that must start no jobs and capture nothing, app factories called per test.

The shop here is small but built the way shops are: its models on Flask-SQLAlchemy, the plugin's
tables in the shop's database by the README's recipe, the extensions in either order.
"""

from __future__ import annotations

import gc
import html
import logging
import os
import re
import sqlite3
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import Result
from flask import Flask, request
from flask.cli import ScriptInfo, run_command
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from shop_events import CustomerMapping, Settings, ShopEvents, Tracker
from shop_events.cli import flask_group
from shop_events.errors import ConfigError
from shop_events.integrations.flask.extension import (
    CAPTURE_KEY,
    capture_models,
    in_flask_command,
    tracker_for,
)
from shop_events.integrations.models import CaptureModels
from shop_events.integrations.models.listeners import same_database
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.migrate import VERSION_TABLE
from shop_events.storage.tables import metadata, outbox
from shop_events.testing import Receiver
from sqlalchemy import String, create_engine, inspect, select, text, update
from sqlalchemy.orm import Mapped, mapped_column

from tests.support import API_KEY, SettingsFactory

PLUGIN_TABLES = {t.name for t in metadata.sorted_tables} | {VERSION_TABLE}
ADMIN = "/shop-events/admin/"
TRACK = "/shop-events/track"
ITEM = {"name": "Hair styler", "price": "341", "url": "http://localhost/p/1"}

db = SQLAlchemy()


class Customer(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "host_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))


Step = Callable[[Flask], None]


def with_db(app: Flask) -> None:
    db.init_app(app)


def with_shop_events(app: Flask) -> None:
    settings: Settings = app.config.pop("TEST_SETTINGS")
    app.config["SHOP_EVENTS_DATABASE_URL"] = app.config["SQLALCHEMY_DATABASE_URI"]
    ShopEvents(app, settings=settings, admin_access=lambda: True)
    capture_models(
        app,
        customer=CustomerMapping(Customer, first_name="name", upsert_contact=True),
        capture_commands=app.config.get("TEST_CAPTURE_COMMANDS", False),
    )


def create_shop(
    database_uri: str,
    settings: Settings,
    steps: Sequence[Step] = (with_db, with_shop_events),
    instance_path: Path | None = None,
    **config: Any,
) -> Flask:
    """The shop's app factory: its extensions set up by ``steps``, in that order."""
    app = Flask(__name__, instance_path=str(instance_path) if instance_path else None)
    app.secret_key = "shop-secret"
    app.config["SQLALCHEMY_DATABASE_URI"] = database_uri
    app.config["TEST_SETTINGS"] = settings
    app.config.update(config)
    for step in steps:
        step(app)

    @app.post("/signup")
    def signup() -> str:
        db.session.add(Customer(email=request.form["email"], name=request.form["name"]))
        db.session.commit()
        return "welcome"

    @app.cli.command("seed")
    def seed() -> None:
        """The shop's own command: it writes, and tries a page as ``flask shell`` users do."""
        db.session.add(Customer(email="seeded@example.com", name="Seed"))
        db.session.commit()
        app.test_client().get("/shop-events/healthz").close()

    return app


@pytest.fixture
def make_shop_settings(receiver: Receiver) -> SettingsFactory:
    """The plugin's settings for the shop, sending to ``receiver``; the database comes from the
    shop's config (the README's recipe), so these tests run on SQLite files of their own."""

    def make(**sections: dict[str, Any]) -> Settings:
        data: dict[str, dict[str, Any]] = {
            "api": {"base_url": receiver.base_url, "key": API_KEY},
            "scheduler": {"enabled": False},
            "web": {"shop_hosts": ["localhost"]},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return Settings.load(data)

    return make


@pytest.fixture
def shop_settings(make_shop_settings: SettingsFactory) -> Settings:
    return make_shop_settings()


def shop_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shop.db'}"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def queued(tracker: Tracker) -> int:
    """Events queued so far, whatever became of them: once a process serves, its jobs may
    already have sent them."""
    return sum(tracker.stats().values())


def dispose(app: Flask) -> None:
    tracker = tracker_for(app)
    tracker.shutdown()
    tracker.engine.dispose()
    with app.app_context():
        db.engine.dispose()


# ------------------------------------------------------------------------- Flask-Migrate


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Flask-Migrate's ``env.py`` runs ``logging.config.fileConfig``, which disables every
    logger it does not name: put them back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {
        name: (logger.disabled, logger.level)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.disabled, logger.level = loggers.get(name, (False, logging.NOTSET))


def with_migrate(app: Flask) -> None:
    Migrate(app, db, include_name=lambda name, type_, parents: name != "legacy_notes")


def table_names(uri: str) -> set[str]:
    engine = create_engine(uri)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")  # its env.py
@pytest.mark.parametrize(
    "steps",
    [(with_db, with_migrate, with_shop_events), (with_db, with_shop_events, with_migrate)],
    ids=["migrate-first", "shop-events-first"],
)
def test_the_shops_autogenerate_and_upgrade_leave_the_plugins_tables_alone(
    tmp_path: Path, shop_settings: Settings, steps: Sequence[Step], restore_logging: None
) -> None:
    uri = shop_file(tmp_path)
    app = create_shop(uri, shop_settings, steps)
    runner = app.test_cli_runner()
    try:
        ok(runner.invoke(flask_group, ["migrate"]))
        with app.app_context(), db.engine.begin() as conn:  # a table the shop's hook leaves out
            conn.execute(text("CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY)"))
        assert table_names(uri) >= PLUGIN_TABLES
        folder = tmp_path / "migrations"
        ok(runner.invoke(args=["db", "init", "-d", str(folder)]))
        ok(runner.invoke(args=["db", "migrate", "-d", str(folder), "-m", "shop"]))
        [script] = (folder / "versions").glob("*.py")
        written = script.read_text()
        assert "op.create_table('host_customer'" in written
        assert "shop_events" not in written
        assert "legacy_notes" not in written  # the shop's own include_name still counts

        ok(runner.invoke(args=["db", "upgrade", "-d", str(folder)]))
        assert PLUGIN_TABLES | {"host_customer", "legacy_notes"} <= table_names(uri)
        again = ok(runner.invoke(args=["db", "migrate", "-d", str(folder), "-m", "again"]))
        assert len(list((folder / "versions").glob("*.py"))) == 1, again.output
        ok(runner.invoke(args=["db", "upgrade", "-d", str(folder)]))
        assert table_names(uri) >= PLUGIN_TABLES
        assert tracker_for(app).check_tables()
    finally:
        dispose(app)


def test_missing_tables_are_said_once_and_on_the_health_page_without_a_traceback(
    empty_database_url: str,
    make_shop_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_shop_settings(
        database={"url": empty_database_url},
        scheduler={"enabled": True, "scan_interval": "1h", "dispatch_interval": "1h"},
    )
    app = Flask("shop")
    app.secret_key = "s"
    ShopEvents(app, settings=settings, admin_access=lambda: True)
    tracker = tracker_for(app)
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="shop_events")
    try:
        for url in (f"{ADMIN}health", ADMIN, f"{ADMIN}dead", f"{ADMIN}health"):
            response = client.get(url)
            assert response.status_code == 503, response.data[:300]
            page = response.data.decode()
            assert "The plugin's tables are missing" in page
            assert html.escape(tracker.database) in page  # a MySQL URL has an &
            assert "flask shop-events migrate" in page
        assert client.get("/shop-events/healthz").data == b"missing-tables"
        assert tracker.scheduler.running and not tracker.scheduler.runs_jobs
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.levelname for r in loud] == ["ERROR"]
        assert "the plugin's tables are missing in" in loud[0].getMessage()
        assert "flask shop-events migrate" in loud[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)

        tracker.migrate()
        assert client.get(f"{ADMIN}health").status_code == 200
        assert tracker.check_tables()
        assert "the plugin's tables are ready" in caplog.text
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def test_the_include_name_hook_leaves_out_only_the_plugins_tables() -> None:
    from shop_events.storage.migrate import include_name

    assert not include_name("shop_events_outbox", "table", {})
    assert not include_name(VERSION_TABLE, "table", {})
    assert include_name("shop_order", "table", {})
    assert include_name("shop_events_x", "column", {"table_name": "shop_order"})


# ------------------------------------------------------------------------- CSRFProtect


def with_csrf(app: Flask) -> None:
    CSRFProtect(app)


def csrf_field(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.mark.parametrize(
    "steps",
    [(with_db, with_csrf, with_shop_events), (with_db, with_shop_events, with_csrf)],
    ids=["csrf-first", "shop-events-first"],
)
def test_operator_pages_and_tracking_work_under_csrfprotect_with_their_own_checks(
    tmp_path: Path, shop_settings: Settings, steps: Sequence[Step]
) -> None:
    app = create_shop(shop_file(tmp_path), shop_settings, steps)
    tracker = tracker_for(app)
    tracker.migrate()
    with app.app_context():
        db.create_all()
    client = app.test_client()
    try:
        tracker.custom_event("login", key_value="ann@example.com", params={"n": 1})
        with tracker.engine.begin() as conn:
            conn.execute(update(outbox).values(status=OutboxStatus.DEAD.value))
        [dead] = [row.id for row in rows(tracker)]

        html = client.get(f"{ADMIN}dead").data.decode()
        token = csrf_field(html)
        refused = client.post(f"{ADMIN}dead/replay", data={"id": str(dead)})
        assert refused.status_code == 400 and b"CSRF token missing or wrong" in refused.data
        forged = client.post(f"{ADMIN}dead/replay", data={"id": str(dead), "csrf_token": "x"})
        assert forged.status_code == 400 and b"CSRF token missing or wrong" in forged.data
        replayed = client.post(f"{ADMIN}dead/replay", data={"id": str(dead), "csrf_token": token})
        assert replayed.status_code == 302, replayed.data[:300]
        assert [row.status for row in rows(tracker)] == [OutboxStatus.PENDING.value]

        tracked = client.post(
            TRACK,
            json={"type": "product_view", "item": ITEM},
            headers={"Origin": "http://localhost"},
        )
        assert tracked.status_code == 204, tracked.data
        foreign = client.post(
            TRACK,
            json={"type": "product_view", "item": ITEM},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403

        unprotected = client.post("/signup", data={"email": "eve@example.com", "name": "Eve"})
        assert unprotected.status_code == 400  # the shop's own forms keep CSRFProtect
        assert b"The CSRF token is missing" in unprotected.data
    finally:
        dispose(app)


def rows(tracker: Tracker) -> list[Any]:
    with tracker.engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


# ------------------------------------------------------------------------- flask commands


def test_in_flask_command_is_true_in_commands_but_flask_run() -> None:
    other = click.Command("seed")
    assert not in_flask_command()  # a WSGI server's thread, a plain script
    with click.Context(other, obj=ScriptInfo()):
        assert in_flask_command()
        with click.Context(run_command, obj=ScriptInfo()):
            assert not in_flask_command()  # `flask run` serves
    with click.Context(other, obj=object()):
        assert not in_flask_command()  # another program's command line (a task queue's)


@pytest.mark.parametrize("capture_commands", [False, True])
def test_flask_commands_start_no_jobs_and_capture_only_when_asked(
    tmp_path: Path, make_shop_settings: SettingsFactory, capture_commands: bool
) -> None:
    settings = make_shop_settings(scheduler={"enabled": True, "scan_interval": "1h"})
    app = create_shop(shop_file(tmp_path), settings, TEST_CAPTURE_COMMANDS=capture_commands)
    tracker = tracker_for(app)
    runner = app.test_cli_runner()
    try:
        ok(runner.invoke(flask_group, ["migrate"]))
        with app.app_context():
            db.create_all()
        ok(runner.invoke(args=["seed"]))  # writes a customer, and makes a request
        ok(runner.invoke(flask_group, ["status"]))
        assert not tracker.scheduler.running
        assert queued(tracker) == (1 if capture_commands else 0)

        client = app.test_client()  # a process that serves
        assert client.post("/signup", data={"email": "ann@example.com", "name": "Ann"}).text
        assert queued(tracker) == (2 if capture_commands else 1)
        assert tracker.scheduler.running
    finally:
        dispose(app)


# ------------------------------------------------------------------------- relative SQLite


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory of the process: not where the shop keeps its database."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_a_relative_sqlite_path_of_the_shop_opens_the_shops_file(
    tmp_path: Path, elsewhere: Path, shop_settings: Settings
) -> None:
    instance = tmp_path / "instance"
    app = create_shop("sqlite:///relshop.db", shop_settings, instance_path=instance)
    tracker = tracker_for(app)
    try:
        assert tracker.engine.url.database == str(instance / "relshop.db")
        with app.app_context():
            assert same_database(db.engine, tracker.engine)
            db.create_all()
        tracker.migrate()
        client = app.test_client()
        assert client.post("/signup", data={"email": "ann@example.com", "name": "Ann"}).text
        with sqlite3.connect(instance / "relshop.db") as conn:
            assert conn.execute("SELECT email FROM host_customer").fetchall() == [
                ("ann@example.com",)
            ]
            [(event,)] = conn.execute("SELECT event_type_key FROM shop_events_outbox").fetchall()
        assert event == "create_contact"
        assert list(elsewhere.iterdir()) == []
    finally:
        dispose(app)


def test_a_relative_path_in_a_bind_is_taken_from_that_engine(
    tmp_path: Path, elsewhere: Path, shop_settings: Settings
) -> None:
    instance = tmp_path / "instance"
    app = Flask("shop", instance_path=str(instance))
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///shop.db"
    app.config["SQLALCHEMY_BINDS"] = {"events": {"url": "sqlite:///events.db"}}
    app.config["SHOP_EVENTS_DATABASE_URL"] = "sqlite:///events.db"
    db.init_app(app)
    ShopEvents(app, settings=shop_settings)
    tracker = tracker_for(app)
    assert tracker.engine.url.database == str(instance / "events.db")
    tracker.engine.dispose()


def test_a_relative_path_of_the_shop_before_its_database_is_set_up_is_refused(
    shop_settings: Settings, elsewhere: Path
) -> None:
    app = Flask("shop")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///relshop.db"
    app.config["SHOP_EVENTS_DATABASE_URL"] = "sqlite:///relshop.db"
    with pytest.raises(ConfigError, match=r"database\.url: .* after db\.init_app\(app\)"):
        ShopEvents(app, settings=shop_settings)
    assert list(elsewhere.iterdir()) == []


def test_a_relative_path_that_is_not_the_shops_stays_relative(
    shop_settings: Settings, elsewhere: Path, tmp_path: Path
) -> None:
    app = Flask("shop", instance_path=str(tmp_path / "instance"))
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///relshop.db"
    app.config["SHOP_EVENTS_DATABASE_URL"] = "sqlite:///events.db"
    db.init_app(app)
    ShopEvents(app, settings=shop_settings)
    tracker = tracker_for(app)
    assert tracker.settings.database.url == "sqlite:///events.db"
    tracker.engine.dispose()


# ------------------------------------------------------------------------- app factories


def test_the_capture_of_an_app_that_is_gone_is_released(
    tmp_path: Path, shop_settings: Settings
) -> None:
    """A test suite calls the app factory per test: each app's capture goes with it."""
    captures: list[weakref.ref[CaptureModels]] = []
    logging.disable(logging.CRITICAL)  # a record kept by pytest could keep a frame, and an app
    try:
        for n in range(5):
            app = create_shop(f"sqlite:///{tmp_path / f'shop{n}.db'}", shop_settings)
            capture: CaptureModels = app.extensions[CAPTURE_KEY]
            assert capture.active
            captures.append(weakref.ref(capture))
            dispose(app)
            del app, capture
    finally:
        logging.disable(logging.NOTSET)
    gc.collect()
    assert [ref() is None or not ref().active for ref in captures] == [True] * 5  # type: ignore[union-attr]


# ------------------------------------------------------------------------- a real project

SHOP_MODULE = """
import atexit
import logging
import sys
import threading

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

logging.basicConfig(level=logging.INFO)
db = SQLAlchemy()
migrate = Migrate()


class Customer(db.Model):
    __tablename__ = "host_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///shop.db"
    db.init_app(app)
    migrate.init_app(app, db)

    from shop_events import CustomerMapping, ShopEvents, capture_models
    app.config["SHOP_EVENTS_DATABASE_URL"] = app.config["SQLALCHEMY_DATABASE_URI"]
    ShopEvents(app)
    capture_models(app, customer=CustomerMapping(Customer, first_name="name", upsert_contact=True))

    @app.cli.command("seed")
    def seed():
        db.session.add(Customer(email="seeded@example.com", name="Seed"))
        db.session.commit()

    return app


@atexit.register
def _job_threads():
    names = [t.name for t in threading.enumerate() if t.name.startswith("shop-events-job")]
    print(f"job threads at exit: {names}", file=sys.stderr)
"""


@pytest.mark.slow
def test_a_flask_migrate_project_runs_its_commands_without_jobs_tracebacks_or_lost_tables(
    tmp_path: Path,
) -> None:
    """The shop's own ``flask`` commands, each in its own process as an operator runs them, on
    the README's recipe with a relative SQLite path."""
    (tmp_path / "shopapp.py").write_text(SHOP_MODULE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_EVENTS_", "FLASK_"))}
    env["FLASK_APP"] = "shopapp"
    outputs: dict[str, str] = {}

    def flask(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "flask", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "Traceback" not in output, output
        assert "job threads at exit: []" in output, output
        assert "scheduler started" not in output, output
        outputs[" ".join(args)] = output
        return output

    flask("db", "init")
    flask("db", "migrate", "-m", "shop")  # before the plugin's tables exist
    flask("db", "upgrade")
    flask("shop-events", "migrate")
    again = flask("db", "migrate", "-m", "again")  # now they exist: still nothing to change
    assert "No changes in schema detected" in again
    flask("seed")
    status = flask("shop-events", "status")
    assert f"database: sqlite:///{tmp_path / 'instance' / 'shop.db'}" in status
    flask("db", "upgrade")

    [script] = (tmp_path / "migrations" / "versions").glob("*.py")
    assert "shop_events" not in script.read_text()
    database = f"sqlite:///{tmp_path / 'instance' / 'shop.db'}"
    assert table_names(database) >= PLUGIN_TABLES | {"host_customer"}
    with sqlite3.connect(tmp_path / "instance" / "shop.db") as conn:
        assert conn.execute("SELECT email FROM host_customer").fetchall() == [
            ("seeded@example.com",)
        ]
        assert conn.execute("SELECT count(*) FROM shop_events_outbox").fetchone() == (0,)
    assert not (tmp_path / "shop.db").exists()

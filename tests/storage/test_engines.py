"""The plugin's engines: bounded waits for captures and workers, write batches sized for SQLite."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from shop_events import Item, Settings, StorageError, Tracker
from shop_events.config import DatabaseSettings
from shop_events.errors import ConfigError
from shop_events.storage import engines
from shop_events.storage.engines import WriteBatches, jobs_lock_path, make_engine, paced
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests import mysql, postgres
from tests.support import Workers, wait_until, write_config

CAPTURE_TIMEOUT = 0.5
SLACK = 2.0
"""What a bounded capture may take beyond ``capture_timeout`` on a loaded machine."""


def capture_in_thread(tracker: Tracker, cart_id: str) -> tuple[threading.Thread, dict[str, object]]:
    """``cart_updated`` on a thread of its own, as a host's request would call it."""
    outcome: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            tracker.cart_updated(cart_id, email="ann@example.com", items=[Item(name="A", price=1)])
            outcome["error"] = None
        except Exception as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# -- write batches on SQLite ---------------------------------------------------------------------


def test_write_batches_on_sqlite_fit_the_write_lock_budget(tmp_path: Path) -> None:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    batches = WriteBatches(engine, 500)
    assert batches.size == WriteBatches.START
    batches.done(16, 0.002)  # fast: grows, at most doubling
    assert batches.size == 32
    batches.done(32, 0.004)
    assert batches.size == 64
    batches.done(64, 0.4)  # 6 ms a row: half the 50 ms budget is 4 rows
    assert batches.size == 4
    engine.dispose()


def test_write_batches_on_a_server_database_are_whole() -> None:
    engine = make_engine(DatabaseSettings(url="postgresql+psycopg://u@/db?host=/nonexistent"))
    batches = WriteBatches(engine, 500)
    batches.done(500, 2.0)
    assert batches.size == 500


def test_a_job_rests_after_each_sqlite_write_transaction_and_a_capture_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside ``paced()`` (the scheduler's jobs) each write transaction is followed, once the
    lock is free, by a rest of four times as long as it held the lock; outside, none."""
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    ticks = iter([100.0, 100.01, 200.0, 200.5])  # held 10 ms; then 500 ms, over the budget
    rests: list[float] = []
    monkeypatch.setattr(engines.time, "monotonic", lambda: next(ticks))
    monkeypatch.setattr(engines.time, "sleep", rests.append)
    with paced():
        for _ in range(2):
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x)")
    with engine.begin() as conn:  # not a job: neither timed nor rested
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert rests == pytest.approx([0.04, 0.2])
    engine.dispose()


def test_the_jobs_lock_lies_beside_a_sqlite_file_only(tmp_path: Path) -> None:
    file_engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'shop.db'}"))
    assert jobs_lock_path(file_engine) == tmp_path / "shop.db.jobs.lock"
    assert jobs_lock_path(make_engine(DatabaseSettings(url="sqlite://"))) is None
    server = make_engine(DatabaseSettings(url="postgresql+psycopg://u@/db?host=/nonexistent"))
    assert jobs_lock_path(server) is None


# -- captures are bounded ------------------------------------------------------------------------


def test_a_capture_waits_for_the_sqlite_write_lock_at_most_capture_timeout(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Another process holds the write lock (a long host transaction): the capture gives up
    with ``StorageError`` after ``database.capture_timeout``, not after the 30 s busy timeout."""
    database = tmp_path / "shop_events.db"
    shutil.copyfile(sqlite_template, database)
    settings = Settings.load(env={}).with_keys(
        {
            "SHOP_EVENTS_DATABASE_URL": f"sqlite:///{database}",
            "SHOP_EVENTS_DATABASE_CAPTURE_TIMEOUT": f"{CAPTURE_TIMEOUT}s",
        }
    )
    tracker = Tracker(settings)
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        thread, outcome = capture_in_thread(tracker, "blocked")
        thread.join(CAPTURE_TIMEOUT + SLACK)
        returned = not thread.is_alive()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    thread.join(60)
    assert returned, "the capture was still waiting for the write lock"
    assert isinstance(outcome["error"], StorageError)
    assert "database is locked" in str(outcome["error"])
    tracker.cart_updated("after", email="ann@example.com", items=[Item(name="A", price=1)])
    tracker.engine.dispose()


# -- a frozen PostgreSQL ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@contextmanager
def frozen(server_url: str) -> Iterator[list[int]]:
    """The cluster's postmaster and backends stopped with SIGSTOP (their connections stay
    open, nothing answers); SIGCONT on the way out, whatever happens."""
    sock = Path(server_url.split("host=", 1)[1])
    postmaster = int((sock.parent / "data" / "postmaster.pid").read_text().split()[0])
    stopped: list[int] = []
    try:
        for pid in [postmaster, *_children(postmaster)]:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield stopped
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def _unread_by(pids: list[int]) -> bool:
    """Whether a unix socket of one of ``pids`` holds input they have not read: a query sent
    to a stopped backend."""
    listing = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines()[1:]:
        fields = line.split()
        waiting = len(fields) > 3 and fields[2].isdigit() and int(fields[2]) > 0
        if waiting and any(f"pid={pid}," in line for pid in pids):
            return True
    return False


@pytest.fixture
def own_cluster() -> Iterator[str]:
    """A cluster of its own (freezing the shared one would stall the rest of the run)."""
    postgres.require()
    with postgres.cluster(in_ram=True) as url:
        yield url


@pytest.mark.postgres
@pytest.mark.slow
def test_a_capture_on_a_frozen_postgresql_fails_within_capture_timeout(own_cluster: str) -> None:
    url = postgres.new_database(own_cluster)
    settings = Settings.load(env={}).with_keys(
        {
            "SHOP_EVENTS_DATABASE_URL": url,
            "SHOP_EVENTS_DATABASE_CAPTURE_TIMEOUT": f"{CAPTURE_TIMEOUT}s",
        }
    )
    tracker = Tracker(settings)
    tracker.migrate()
    tracker.cart_updated("warm", email="ann@example.com", items=[Item(name="A", price=1)])
    with frozen(own_cluster):
        # a connection in the pool (pinged, then dead) and, the second time, a new one
        first, first_outcome = capture_in_thread(tracker, "frozen-1")
        first.join(CAPTURE_TIMEOUT + SLACK)
        second, second_outcome = capture_in_thread(tracker, "frozen-2")
        second.join(CAPTURE_TIMEOUT + SLACK)
        returned = (not first.is_alive(), not second.is_alive())
    first.join(60)
    second.join(60)
    print(f"captures on a frozen database: {first_outcome}, {second_outcome}")
    assert returned == (True, True), "a capture was still waiting on the frozen database"
    for outcome in (first_outcome, second_outcome):
        assert isinstance(outcome["error"], StorageError)
    # thawed: the pool recovers, captures work again
    tracker.cart_updated("thawed", email="ann@example.com", items=[Item(name="A", price=1)])
    tracker.engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_statement_that_outlasts_several_wait_slices_goes_on_where_it_was(
    own_cluster: str,
) -> None:
    """The bounded waits poll in slices of 0.25 s. A large statement half-sent to a server that
    stops reading for a second (frozen here; a loaded one in life) must go on where it was once
    the server reads again, whole, on a connection still usable."""
    engine = make_engine(DatabaseSettings(url=postgres.new_database(own_cluster)))
    big = "x" * 20_000_000  # far more than the socket's buffers: the send waits to write
    outcome: dict[str, object] = {}
    conn = engine.connect()

    def run() -> None:
        try:
            outcome["length"] = conn.execute(text("SELECT length(:v)"), {"v": big}).scalar()
            outcome["after"] = conn.execute(text("SELECT 1")).scalar()
        except Exception as exc:  # the assertion below shows it
            outcome["error"] = exc

    try:
        conn.execute(text("SELECT 1"))  # connected and in a transaction: the next is the send
        with frozen(own_cluster):
            sender = threading.Thread(target=run)
            sender.start()
            sender.join(1.0)  # the statement cannot finish while the server is stopped
            assert sender.is_alive()
        sender.join(60)
        assert outcome == {"length": 20_000_000, "after": 1}
    finally:
        conn.close()
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_stops_on_sigterm_while_postgresql_is_frozen(
    own_cluster: str, tmp_path: Path
) -> None:
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to see the worker's query wait at the frozen server")
    url = postgres.new_database(own_cluster)
    Tracker(Settings.load(env={}).with_keys({"SHOP_EVENTS_DATABASE_URL": url})).migrate()
    config = write_config(
        tmp_path / "worker.toml",
        {
            "api": {"base_url": "http://127.0.0.1:9/api", "key": "k"},
            "database": {"url": url},
            "scheduler": {"scan_interval": "100ms", "dispatch_interval": "100ms"},
        },
    )
    workers = Workers(tmp_path)
    try:
        worker = workers.start(config)
        assert wait_until(lambda: "scan every" in worker.output(), 60), worker.output()
        with frozen(own_cluster) as stopped:
            assert wait_until(lambda: _unread_by(stopped), 30), "the worker never queried"
            code, seconds = worker.terminate(timeout=15)
        print(f"worker exit after SIGTERM with the database frozen: {code} in {seconds:.1f} s")
        assert code == 0, workers.outputs()
        assert "stopped" in worker.output()
    finally:
        workers.close()


# -- MySQL and MariaDB ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("mysql://shop@db.example/shop", "mysql"),
        ("mysql+pymysql://shop@db.example/shop", "mysql"),
        ("mariadb+pymysql://shop@db.example/shop", "mariadb"),
    ],
)
def test_a_mysql_url_is_driven_by_pymysql(url: str, dialect: str) -> None:
    """A shop's own URL without a driver (``mysql://``, as mysqlclient users write it) works
    as it is: the plugin's engine uses PyMySQL, whose waits it bounds."""
    engine = make_engine(DatabaseSettings(url=url))
    assert (engine.dialect.name, engine.dialect.driver) == (dialect, "pymysql")


def test_a_mysql_url_naming_another_driver_is_refused_with_what_to_write() -> None:
    with pytest.raises(ConfigError, match=r"database\.url: the MySQL driver mysqldb is not"):
        make_engine(DatabaseSettings(url="mysql+mysqldb://shop@db.example/shop"))


@pytest.mark.mysql
def test_a_mariadb_session_is_utc_read_committed_strict_4_byte_and_bounded(
    mysql_server: str,
) -> None:
    """Whatever the server's defaults (this one keeps latin1 and REPEATABLE READ)."""
    settings = DatabaseSettings(url=mysql_server, statement_timeout=timedelta(seconds=7))
    engine = make_engine(settings)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT @@time_zone, @@tx_isolation, @@innodb_lock_wait_timeout,"
            " @@max_statement_time, @@sql_mode, @@character_set_connection"
        ).one()
    engine.dispose()
    zone, isolation, lock_wait, statement, mode, charset = row
    assert (zone, isolation, lock_wait, statement) == ("+00:00", "READ-COMMITTED", 7, 7.0)
    assert "STRICT_TRANS_TABLES" in mode.split(",")
    assert charset == "utf8mb4"


@pytest.mark.mysql
def test_a_long_statement_on_mariadb_is_cut_by_the_server(mysql_server: str) -> None:
    engine = make_engine(DatabaseSettings(url=mysql_server, statement_timeout=timedelta(seconds=1)))
    with engine.connect() as conn, pytest.raises(OperationalError, match="max_statement_time"):
        conn.exec_driver_sql("SELECT SLEEP(5)")
    engine.dispose()


@pytest.fixture
def own_mariadb() -> Iterator[str]:
    """A server of its own (freezing the shared one would stall the rest of the run)."""
    mysql.require()
    with mysql.server(in_ram=True) as url:
        yield url


@contextmanager
def frozen_process(pid: int) -> Iterator[list[int]]:
    """The process stopped with SIGSTOP (its connections stay open, nothing answers); SIGCONT
    on the way out, whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield [pid]
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.mysql
@pytest.mark.slow
def test_a_capture_on_a_frozen_mariadb_fails_within_capture_timeout(own_mariadb: str) -> None:
    url = mysql.new_database(own_mariadb)
    settings = Settings.load(env={}).with_keys(
        {
            "SHOP_EVENTS_DATABASE_URL": url,
            "SHOP_EVENTS_DATABASE_CAPTURE_TIMEOUT": f"{CAPTURE_TIMEOUT}s",
        }
    )
    tracker = Tracker(settings)
    tracker.migrate()
    tracker.cart_updated("warm", email="ann@example.com", items=[Item(name="A", price=1)])
    with frozen_process(mysql.server_pid(own_mariadb)):
        # a connection in the pool (pinged, then dead) and, the second time, a new one
        first, first_outcome = capture_in_thread(tracker, "frozen-1")
        first.join(CAPTURE_TIMEOUT + SLACK)
        second, second_outcome = capture_in_thread(tracker, "frozen-2")
        second.join(CAPTURE_TIMEOUT + SLACK)
        returned = (not first.is_alive(), not second.is_alive())
    first.join(60)
    second.join(60)
    print(f"captures on a frozen database: {first_outcome}, {second_outcome}")
    assert returned == (True, True), "a capture was still waiting on the frozen database"
    for outcome in (first_outcome, second_outcome):
        assert isinstance(outcome["error"], StorageError)
    # thawed: the pool recovers, captures work again
    tracker.cart_updated("thawed", email="ann@example.com", items=[Item(name="A", price=1)])
    tracker.engine.dispose()


@pytest.mark.mysql
@pytest.mark.slow
def test_a_worker_stops_on_sigterm_while_mariadb_is_frozen(
    own_mariadb: str, tmp_path: Path
) -> None:
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to see the worker's query wait at the frozen server")
    url = mysql.new_database(own_mariadb)
    Tracker(Settings.load(env={}).with_keys({"SHOP_EVENTS_DATABASE_URL": url})).migrate()
    config = write_config(
        tmp_path / "worker.toml",
        {
            "api": {"base_url": "http://127.0.0.1:9/api", "key": "k"},
            "database": {"url": url},
            "scheduler": {"scan_interval": "100ms", "dispatch_interval": "100ms"},
        },
    )
    workers = Workers(tmp_path)
    try:
        worker = workers.start(config)
        assert wait_until(lambda: "scan every" in worker.output(), 60), worker.output()
        with frozen_process(mysql.server_pid(own_mariadb)) as stopped:
            assert wait_until(lambda: _unread_by(stopped), 30), "the worker never queried"
            code, seconds = worker.terminate(timeout=15)
        print(f"worker exit after SIGTERM with the database frozen: {code} in {seconds:.1f} s")
        assert code == 0, workers.outputs()
        assert "stopped" in worker.output()
    finally:
        workers.close()


def test_a_missing_mariadb_fails_the_mysql_tests_instead_of_skipping_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mysql, "SERVER", tmp_path / "mariadbd")
    with pytest.raises(pytest.fail.Exception, match="apt-get install mariadb-server"):
        mysql.require()

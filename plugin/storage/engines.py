"""The plugin's engines: made from ``database.url`` and tuned for each dialect.

SQLite is the embedded default: WAL, a busy timeout and ``BEGIN IMMEDIATE`` so that several
threads and processes queue for the write lock instead of failing on a lock upgrade. A
background job's write transactions rest after they held the lock (:func:`paced`), and its
batches are sized to hold it briefly (:class:`WriteBatches`), so that a capture waiting for the
lock gets it soon. PostgreSQL and MySQL/MariaDB (through PyMySQL) are the multi-process,
multi-host engines.

Every wait on an engine made here is bounded: see :mod:`.waits`. Statements each engine writes
its own way are in :mod:`.dialects`.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from ..config import DatabaseSettings, mask_url, scrub
from ..errors import ConfigError
from .dialects import MYSQL
from .dialects import upsert as upsert  # re-exported
from .waits import GRACE, LIMITS, Limits, tune_psycopg, tune_pymysql

SUPPORTED = ("sqlite", "postgresql", "mysql", "mariadb")
MYSQL_DRIVER = "pymysql"

_paced: contextvars.ContextVar[float] = contextvars.ContextVar("shop_events_paced", default=0.0)
"""How long this thread's write transactions rest, in times the lock was held (0: none)."""
_LOCKED_AT = "shop_events_locked_at"
_REST = "shop_events_rest"
REST_AFTER_WRITE = 4.0
"""A job holds SQLite's write lock at most a fifth of the time. A writer waiting for the lock
(a capture) gets it only when it polls, at growing intervals (1, 2, 5 … 100 ms): a lock that is
free most of the time lets it in at one of its first looks."""
REST_AFTER_DELIVERY = 1.0
"""Delivery's claims and settlements are short and many: resting as long as they held the
lock, they leave it free half the time, so a capture still gets it at one of its first looks,
and delivery keeps up with the account's rate limit."""


def make_engine(settings: DatabaseSettings) -> Engine:
    """The plugin's engine for ``database.url``, with its timeouts."""
    url = settings.url
    target: str | URL = url
    kwargs: dict[str, Any] = {"echo": settings.echo, "future": True}
    statement = settings.statement_timeout.total_seconds()
    capture = settings.capture_timeout.total_seconds()
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": statement, "check_same_thread": False}
        if url in {"sqlite://", "sqlite:///:memory:"}:
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_timeout"] = capture
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["pool_timeout"] = capture
    try:
        if url.split(":", 1)[0].split("+", 1)[0].lower() in MYSQL:
            target = _pymysql_url(url)
            kwargs.update(_mysql_options(settings))
        engine = create_engine(target, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        reason = scrub(str(exc), url)  # a driver's message may quote the URL or its parts
        raise ConfigError(f"database.url: cannot use {engine_label(url)}: {reason}") from None
    if engine.dialect.name not in SUPPORTED:
        raise ConfigError(
            f"database.url: {engine.dialect.name} is not supported;"
            " use sqlite, postgresql or mysql (MariaDB: mariadb)"
        )
    limits = Limits(
        statement=statement + GRACE,
        capture=capture,
        job_busy_ms=max(1, round(statement * 1000)),
        write_budget=settings.write_lock_budget.total_seconds(),
        grace=min(capture, 2.0),
    )
    LIMITS[engine] = limits
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, limits)
    elif engine.dialect.driver == "psycopg":
        tune_psycopg(engine, settings, limits)
    elif engine.dialect.name in MYSQL:
        tune_pymysql(engine, settings, limits)
    return engine


def _pymysql_url(url: str) -> URL:
    """A MySQL URL with PyMySQL as its driver: the one the plugin bounds its waits with. A URL
    naming no driver (``mysql://``, as a shop using mysqlclient writes it) gets PyMySQL."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if driver and driver != MYSQL_DRIVER:
        raise ConfigError(
            f"database.url: the MySQL driver {driver} is not supported; write"
            f" {backend}+{MYSQL_DRIVER}://… (pip install 'shop-events[mysql]')"
        )
    return parsed.set(drivername=f"{backend}+{MYSQL_DRIVER}")


def _mysql_options(settings: DatabaseSettings) -> dict[str, Any]:
    """``create_engine`` options of a MySQL engine: ``READ COMMITTED`` (as on PostgreSQL: no gap
    locks, each statement sees what others committed before it), 4-byte UTF-8 whatever the
    URL says, and the driver's own socket timeouts as the outer bound of every wait."""
    outer = settings.statement_timeout.total_seconds() + GRACE
    return {
        "isolation_level": "READ COMMITTED",
        "connect_args": {
            "charset": "utf8mb4",
            "connect_timeout": settings.connect_timeout.total_seconds(),
            "read_timeout": outer,
            "write_timeout": outer,
        },
    }


def jobs_lock_path(engine: Engine) -> Path | None:
    """Where the processes on one SQLite file elect the one that runs the jobs
    (``<database>.jobs.lock``); None for a server database or an in-memory one."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + ".jobs.lock")


def engine_label(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return mask_url(url)


def _tune_sqlite(engine: Engine, limits: Limits) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {limits.job_busy_ms}")
        if engine.url.database not in (None, "", ":memory:"):
            # Readers and the one writer do not block each other. The mode is stored in the
            # file: a shop's file shared with the plugin stays in WAL, and is backed up with
            # SQLite's online backup, not by copying it (README: Operating it).
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        rest = _paced.get()
        if rest:
            conn.info[_LOCKED_AT] = (time.monotonic(), rest)

    def _on_end(conn: Connection) -> None:
        locked = conn.info.pop(_LOCKED_AT, None)
        if locked is not None:
            locked_at, rest = locked
            held = min(time.monotonic() - locked_at, limits.write_budget)
            conn.info[_REST] = held * rest

    event.listen(engine, "commit", _on_end)
    event.listen(engine, "rollback", _on_end)

    @event.listens_for(engine, "checkin")
    def _rest(_dbapi_connection: Any, record: Any) -> None:
        rest = record.info.pop(_REST, None)  # the lock is free now: others may take it
        if rest:
            time.sleep(rest)


@contextmanager
def paced() -> Iterator[None]:
    """Mark this thread's work inside the block as a background job's: on SQLite each of its
    write transactions is followed by a rest of :data:`REST_AFTER_WRITE` times as long as it
    held the write lock (counted up to ``database.write_lock_budget``)."""
    token = _paced.set(REST_AFTER_WRITE)
    try:
        yield
    finally:
        _paced.reset(token)


@contextmanager
def eased(rest: float) -> Iterator[None]:
    """Within the block, a paced job's write transactions rest only ``rest`` times as long as
    they held the lock (when that is less than they would)."""
    current = _paced.get()
    token = _paced.set(min(current, rest) if current else 0.0)
    try:
        yield
    finally:
        _paced.reset(token)


class WriteBatches:
    """Sizes a job's batches so that one write transaction holds SQLite's write lock for about
    half of ``database.write_lock_budget`` (the time a batch takes varies with the load).

    On a server database (row locks, no one write lock) every batch is ``maximum`` rows. Use:
    ``limit = batches.size``; run the transaction; ``batches.done(rows, seconds)``.
    """

    START = 16
    AIM = 0.5

    def __init__(self, engine: Engine, maximum: int) -> None:
        limits = LIMITS.get(engine)
        self.maximum = max(1, maximum)
        self.budget = limits.write_budget if limits and engine.dialect.name == "sqlite" else None
        self.size = self.maximum if self.budget is None else min(self.maximum, self.START)

    def done(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` held the lock ``seconds``: size the next one (at most double)."""
        if self.budget is None or rows <= 0 or seconds <= 0:
            return
        fits = int(self.budget * self.AIM * rows / seconds)
        self.size = max(1, min(self.maximum, fits, self.size * 2))

    @contextmanager
    def transaction(self, engine: Engine) -> Iterator[tuple[Connection, list[int]]]:
        """``engine.begin()`` timed from the moment it holds the lock; put the number of rows
        handled into the yielded list."""
        rows: list[int] = []
        with engine.begin() as conn:
            started = time.monotonic()
            yield conn, rows
        self.done(sum(rows), time.monotonic() - started)

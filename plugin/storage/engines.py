"""Engines and transactions: the plugin's own engine, or the host's session or connection.

SQLite is the embedded default: WAL, a busy timeout and ``BEGIN IMMEDIATE`` so that several
threads and processes queue for the write lock instead of failing on a lock upgrade.
PostgreSQL is the multi-process, multi-host engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CTE, Connection, Engine, Select, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from ..config import DatabaseSettings
from ..errors import ConfigError

SUPPORTED = ("sqlite", "postgresql")
Bind = Session | Connection | None
"""Where a capture writes: the host's ``Session`` or ``Connection``, or ``None`` for our own."""


def make_engine(settings: DatabaseSettings) -> Engine:
    """The plugin's engine for ``database.url``."""
    url = settings.url
    kwargs: dict[str, Any] = {"echo": settings.echo, "future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if url in {"sqlite://", "sqlite:///:memory:"}:
            kwargs["poolclass"] = StaticPool
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:
        raise ConfigError(f"database.url: cannot use {engine_label(url)}: {exc}") from None
    if engine.dialect.name not in SUPPORTED:
        raise ConfigError(
            f"database.url: {engine.dialect.name} is not supported; use sqlite or postgresql"
        )
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine)
    return engine


def engine_label(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the configured URL"


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def transaction(engine: Engine, bind: Bind = None) -> Iterator[Connection]:
    """A connection to write on: the host's (inside its transaction) or a new one of ours.

    With the host's session or connection, nothing is committed here: the host's commit or
    rollback decides, so a rolled-back order leaves no event.
    """
    if isinstance(bind, Session):
        yield bind.connection()
    elif isinstance(bind, Connection):
        yield bind
    elif bind is None:
        with engine.begin() as conn:
            yield conn
    else:
        raise TypeError(
            f"session/connection must be a SQLAlchemy Session or Connection, got {bind!r}"
        )


def locked_batch(query: Select[Any]) -> CTE:
    """The rows of ``query`` locked for this transaction, skipping rows others hold (a CTE).

    Joined into an ``UPDATE … FROM``, the batch is computed once: PostgreSQL may re-run a
    ``LIMIT`` subquery inside ``WHERE id IN (…)`` and so claim more rows than the limit.
    SQLite ignores the lock clause; its write lock serialises the whole statement instead.
    """
    return query.with_for_update(skip_locked=True).cte("batch")


def upsert(conn: Connection, table: Table) -> sqlite.Insert:
    """``INSERT`` with ``ON CONFLICT`` support for the connection's dialect.

    PostgreSQL's and SQLite's ``Insert`` share the ``on_conflict_*`` and ``excluded`` API used
    here; the return type names one of them for the type checker.
    """
    if conn.dialect.name == "postgresql":
        return cast(sqlite.Insert, postgresql.insert(table))
    return sqlite.insert(table)

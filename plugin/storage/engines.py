"""Engines and transactions: the plugin's own engine, or the host's session or connection.

SQLite is the embedded default: WAL, a busy timeout and ``BEGIN IMMEDIATE`` so that several
threads and processes queue for the write lock instead of failing on a lock upgrade.
PostgreSQL is the multi-process, multi-host engine.

Every wait on the database is bounded. A server that stops answering (frozen, not gone: its
connections stay open) is never noticed by the kernel, and a server-side ``statement_timeout``
cannot fire in a stopped server, so the client bounds each wait itself: a capture by
``database.capture_timeout`` in all, any other statement by ``database.statement_timeout``,
and, once :func:`stop_waiting` was called (shutdown), by a short grace. A connection whose
wait ran out is closed, since its state is unknown.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CTE, Connection, Engine, Select, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from ..config import DatabaseSettings, mask_url, scrub
from ..errors import ConfigError

SUPPORTED = ("sqlite", "postgresql")
Bind = Session | Connection | None
"""Where a capture writes: the host's ``Session`` or ``Connection``, or ``None`` for our own."""


@dataclasses.dataclass
class _Limits:
    """The client-side bounds of one engine's waits, in seconds."""

    statement: float
    capture: float
    job_busy_ms: int
    write_budget: float
    stopping_since: float | None = None
    """Monotonic time :func:`stop_waiting` was called; from then on waits get ``grace``."""
    grace: float = 2.0


_LIMITS: weakref.WeakKeyDictionary[Engine, _Limits] = weakref.WeakKeyDictionary()
_capture_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shop_events_capture_deadline", default=None
)
_unbounded: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "shop_events_unbounded", default=False
)
_paced: contextvars.ContextVar[bool] = contextvars.ContextVar("shop_events_paced", default=False)
_LOCKED_AT = "shop_events_locked_at"
_REST = "shop_events_rest"
REST_AFTER_WRITE = 4.0
"""A job holds SQLite's write lock at most a fifth of the time. A writer waiting for the lock
(a capture) gets it only when it polls, at growing intervals (1, 2, 5 … 100 ms): a lock that is
free most of the time lets it in at one of its first looks."""
_GRACE = 1.0
"""Added to ``statement_timeout`` on the client, so that a live server cancels first."""


def make_engine(settings: DatabaseSettings) -> Engine:
    """The plugin's engine for ``database.url``, with its timeouts."""
    url = settings.url
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
        engine = create_engine(url, **kwargs)
    except Exception as exc:
        reason = scrub(str(exc), url)  # a driver's message may quote the URL or its parts
        raise ConfigError(f"database.url: cannot use {engine_label(url)}: {reason}") from None
    if engine.dialect.name not in SUPPORTED:
        raise ConfigError(
            f"database.url: {engine.dialect.name} is not supported; use sqlite or postgresql"
        )
    limits = _Limits(
        statement=statement + _GRACE,
        capture=capture,
        job_busy_ms=max(1, round(statement * 1000)),
        write_budget=settings.write_lock_budget.total_seconds(),
        grace=min(capture, 2.0),
    )
    _LIMITS[engine] = limits
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, limits)
    elif engine.dialect.driver == "psycopg":
        _tune_psycopg(engine, settings, limits)
    return engine


def stop_waiting(engine: Engine) -> None:
    """From now on no wait on ``engine`` lasts longer than a short grace (shutdown): a frozen
    database must not keep a stopping process alive. Waits already in progress end too."""
    limits = _LIMITS.get(engine)
    if limits is not None and limits.stopping_since is None:
        limits.stopping_since = time.monotonic()


def resume_waiting(engine: Engine) -> None:
    """Undo :func:`stop_waiting`: the usual bounds again (a tracker started after a shutdown)."""
    limits = _LIMITS.get(engine)
    if limits is not None:
        limits.stopping_since = None


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


def _tune_sqlite(engine: Engine, limits: _Limits) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {limits.job_busy_ms}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        if _paced.get():
            conn.info[_LOCKED_AT] = time.monotonic()

    def _on_end(conn: Connection) -> None:
        locked_at = conn.info.pop(_LOCKED_AT, None)
        if locked_at is not None:
            held = min(time.monotonic() - locked_at, limits.write_budget)
            conn.info[_REST] = held * REST_AFTER_WRITE

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
    token = _paced.set(True)
    try:
        yield
    finally:
        _paced.reset(token)


def _wait_limit(limits: _Limits, started: float, now: float) -> tuple[float, str]:
    """How much longer a wait that began at ``started`` may last, and the setting that says so."""
    left, why = started + limits.statement - now, "database.statement_timeout"
    if _unbounded.get():
        left = math.inf
    deadline = _capture_deadline.get()
    if deadline is not None and deadline - now < left:
        left, why = deadline - now, "database.capture_timeout"
    if limits.stopping_since is not None:
        stop_left = max(started, limits.stopping_since) + limits.grace - now
        if stop_left < left:
            left, why = stop_left, "shutting down"
    return left, why


def _tune_psycopg(engine: Engine, settings: DatabaseSettings, limits: _Limits) -> None:
    import psycopg

    wait_timeout: type[BaseException] | None = getattr(psycopg.errors, "_WaitTimeout", None)
    bounded = "interval" in inspect.signature(psycopg.Connection.wait).parameters
    timed_out: type[BaseException] = wait_timeout or Exception
    slice_seconds = 0.25
    """A long wait is taken in slices, so that :func:`stop_waiting` reaches it."""

    class BoundedConnection(psycopg.Connection[Any]):
        """A psycopg connection whose every wait on the server is bounded (see the module)."""

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            started = time.monotonic()
            while True:
                now = time.monotonic()
                left, why = _wait_limit(limits, started, now)
                if timeout is not None:
                    left = min(left, started + timeout - now)
                if left <= 0:
                    self.pgconn.finish()  # a statement may be half-sent: unusable
                    raise psycopg.OperationalError(
                        f"the database did not answer within {why}; connection closed"
                    )
                try:
                    return super().wait(gen, interval, min(left, slice_seconds))
                except timed_out:
                    continue  # the generator waits where it was; take the next slice

    options = f"-c statement_timeout={round(settings.statement_timeout.total_seconds() * 1000)}"
    connect_timeout = max(2, math.ceil(settings.connect_timeout.total_seconds()))

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        given = cparams.get("options")
        cparams["options"] = f"{given} {options}" if given else options
        cparams.setdefault("connect_timeout", connect_timeout)
        connection_class = BoundedConnection if bounded and wait_timeout else psycopg.Connection
        deadline = _capture_deadline.get()
        if limits.stopping_since is not None:
            stop_at = time.monotonic() + limits.grace
            deadline = stop_at if deadline is None else min(deadline, stop_at)
        if deadline is None:
            return connection_class.connect(*cargs, **cparams)
        return _connect_by(deadline, lambda: connection_class.connect(*cargs, **cparams))


def _connect_by(deadline: float, connect: Callable[[], Any]) -> Any:
    """Open a connection in a helper thread, giving up at ``deadline`` (libpq's own connect
    timeout counts whole seconds, at least 2); one that opens too late is closed. Used by
    captures and during shutdown only: a thread per connect is cheap next to connecting."""
    import psycopg

    lock = threading.Lock()
    ready = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            conn = connect()
        except BaseException as exc:
            with lock:
                outcome["error"] = exc
                ready.set()
            return
        with lock:
            late = outcome.get("abandoned", False)
            if not late:
                outcome["conn"] = conn
                ready.set()
        if late:
            conn.close()

    threading.Thread(target=run, name="shop-events-connect", daemon=True).start()
    if not ready.wait(max(0.0, deadline - time.monotonic())):
        with lock:
            if not ready.is_set():
                outcome["abandoned"] = True
                raise psycopg.OperationalError(
                    "the database did not accept a connection in time (database.capture_timeout,"
                    " or shutting down)"
                )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["conn"]


@contextmanager
def transaction(engine: Engine, bind: Bind = None) -> Iterator[Connection]:
    """A connection to write on: the host's (inside its transaction) or a new one of ours.

    With the host's session or connection, nothing is committed here: the host's commit or
    rollback decides, so a rolled-back order leaves no event. On our own engine the whole
    transaction is bounded by ``database.capture_timeout``: it then fails with the driver's
    error (``OperationalError``; on SQLite "database is locked").
    """
    if isinstance(bind, Session):
        yield bind.connection()
    elif isinstance(bind, Connection):
        yield bind
    elif bind is None:
        limits = _LIMITS.get(engine)
        if limits is None:
            with engine.begin() as conn:
                yield conn
            return
        token = _capture_deadline.set(time.monotonic() + limits.capture)
        try:
            if engine.dialect.name == "sqlite":
                with _sqlite_capture(engine, limits) as conn:
                    yield conn
            else:
                with engine.begin() as conn:
                    yield conn
        finally:
            _capture_deadline.reset(token)
    else:
        raise TypeError(
            f"session/connection must be a SQLAlchemy Session or Connection, got {bind!r}"
        )


@contextmanager
def _sqlite_capture(engine: Engine, limits: _Limits) -> Iterator[Connection]:
    """A write transaction that waits for the write lock at most ``capture_timeout``."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        capture_ms = max(1, round(limits.capture * 1000))
        if raw is not None:
            raw.execute(f"PRAGMA busy_timeout = {capture_ms}")
        try:
            with conn.begin():
                yield conn
        finally:
            raw = conn.connection.dbapi_connection if not conn.invalidated else None
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout = {limits.job_busy_ms}")


@contextmanager
def unbounded() -> Iterator[None]:
    """No statement bound on this thread's waits inside the block (migrations, which may
    rebuild large tables); pair it with lifting the server's ``statement_timeout``. A shutdown
    still ends them."""
    token = _unbounded.set(True)
    try:
        yield
    finally:
        _unbounded.reset(token)


class WriteBatches:
    """Sizes a job's batches so that one write transaction holds SQLite's write lock for about
    half of ``database.write_lock_budget`` (the time a batch takes varies with the load).

    On a server database (row locks, no one write lock) every batch is ``maximum`` rows. Use:
    ``limit = batches.size``; run the transaction; ``batches.done(rows, seconds)``.
    """

    START = 16
    AIM = 0.5

    def __init__(self, engine: Engine, maximum: int) -> None:
        limits = _LIMITS.get(engine)
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

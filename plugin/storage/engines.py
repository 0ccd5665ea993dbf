"""Engines and transactions: the plugin's own engine, or the host's session or connection.

SQLite is the embedded default: WAL, a busy timeout and ``BEGIN IMMEDIATE`` so that several
threads and processes queue for the write lock instead of failing on a lock upgrade.
PostgreSQL and MySQL/MariaDB (through PyMySQL) are the multi-process, multi-host engines.

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
import math
import select as io_select
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ClauseElement,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy import update as update_statement
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import visitors

from ..config import DatabaseSettings, mask_url, scrub
from ..errors import ConfigError
from .fork_gate import GATE

SUPPORTED = ("sqlite", "postgresql", "mysql", "mariadb")
MYSQL = frozenset({"mysql", "mariadb"})
"""The dialect names of MySQL and MariaDB (``mariadb+pymysql://`` names the second)."""
MYSQL_DRIVER = "pymysql"
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
_GRACE = 1.0
"""Added to ``statement_timeout`` on the client, so that a live server cancels first."""


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
    elif engine.dialect.name in MYSQL:
        _tune_pymysql(engine, settings, limits)
    return engine


def is_mysql(conn: Connection | Engine) -> bool:
    """Whether ``conn`` talks to MySQL or MariaDB (the dialects ``mysql`` and ``mariadb``)."""
    return conn.dialect.name in MYSQL


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
    outer = settings.statement_timeout.total_seconds() + _GRACE
    return {
        "isolation_level": "READ COMMITTED",
        "connect_args": {
            "charset": "utf8mb4",
            "connect_timeout": settings.connect_timeout.total_seconds(),
            "read_timeout": outer,
            "write_timeout": outer,
        },
    }


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


def _set_up_sqlite(engine: Engine, limits: _Limits, dbapi_connection: Any) -> None:
    """A new connection of the plugin's SQLite engine: its pragmas."""
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (the "begin" event)
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {limits.job_busy_ms}")
    # Deleted and overwritten content is zeroed, not left in free space: an erasure leaves
    # no bytes of the address in the file (a checkpoint then clears the WAL; README:
    # Privacy). Every connection, since one that rewrites a row leaves its old copy.
    cursor.execute("PRAGMA secure_delete = ON")
    if engine.url.database not in (None, "", ":memory:"):
        # Readers and the one writer do not block each other. The mode is stored in the
        # file: a shop's file shared with the plugin stays in WAL, and is backed up with
        # SQLite's online backup, not by copying it (README: Operating it).
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _tune_sqlite(engine: Engine, limits: _Limits) -> None:
    GATE.watch(engine)  # no fork while a job's thread is inside SQLite (storage/fork_gate.py)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with GATE.held():
            _set_up_sqlite(engine, limits, dbapi_connection)

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
    from psycopg.waiting import Ready, Wait

    slice_seconds = 0.25
    """A long wait is taken in slices, so that :func:`stop_waiting` reaches it."""

    class BoundedConnection(psycopg.Connection[Any]):
        """A psycopg connection whose every wait on the server is bounded (see the module).

        It drives psycopg's generator itself, one poll of the socket per slice: a generator
        must never be resumed without the readiness it waits for (handing one back to
        ``psycopg.waiting.wait`` after a timed-out slice resumes it with nothing, and breaks
        the statement in progress).
        """

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            started = time.monotonic()
            poller = io_select.poll()
            fileno = self.pgconn.socket
            try:
                waiting = next(gen)
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
                    poller.register(fileno, _POLL_EVENTS[waiting])
                    events = poller.poll(min(left, slice_seconds) * 1000)
                    if not events:
                        continue  # the slice passed: look at the bounds again
                    happened = events[0][1]
                    failed = happened & (io_select.POLLERR | io_select.POLLHUP)
                    readable = bool(happened & io_select.POLLIN or failed)
                    writable = bool(happened & io_select.POLLOUT or failed)
                    waiting = gen.send(Ready(Ready.R * readable | Ready.W * writable))
            except StopIteration as done:
                return done.value
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    self.pgconn.finish()  # interrupted mid-statement: the connection is unusable
                raise

    _POLL_EVENTS = {
        Wait.R: io_select.POLLIN,
        Wait.W: io_select.POLLOUT,
        Wait.RW: io_select.POLLIN | io_select.POLLOUT,
    }

    options = f"-c statement_timeout={round(settings.statement_timeout.total_seconds() * 1000)}"
    connect_timeout = max(2, math.ceil(settings.connect_timeout.total_seconds()))

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        given = cparams.get("options")
        cparams["options"] = f"{given} {options}" if given else options
        cparams.setdefault("connect_timeout", connect_timeout)
        connection_class = BoundedConnection
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


_SLICE = 0.25
"""A long wait is taken in slices, so that :func:`stop_waiting` reaches it."""


def _tune_pymysql(engine: Engine, settings: DatabaseSettings, limits: _Limits) -> None:
    """Bound every wait of a PyMySQL connection on the client (see the module), and give each
    connection the session the plugin's statements expect.

    The session: UTC (``NOW()`` and the stored naive times agree), ``innodb_lock_wait_timeout``
    and the server's statement bound from ``database.statement_timeout`` (MariaDB's
    ``max_statement_time`` covers every statement; MySQL's ``max_execution_time`` only reads),
    and strict mode, so a value that does not fit is an error, never silently cut.
    """
    import pymysql

    statement = settings.statement_timeout.total_seconds()
    connect_timeout = settings.connect_timeout.total_seconds()
    lock_wait = max(1, math.ceil(statement))
    base = pymysql.connections.Connection
    hooks = ("_read_bytes", "_write_bytes", "_execute_command", "_force_close", "connect")
    bounded = all(callable(getattr(base, name, None)) for name in hooks)

    class BoundedConnection(base):  # type: ignore[misc, valid-type]
        """A PyMySQL connection whose every wait on the server is bounded (see the module):
        it reads the socket itself, in slices, instead of through one blocking file read."""

        _pending: bytearray
        _wait_started: float

        def connect(self, sock: Any = None) -> None:
            self._pending = bytearray()
            self._wait_started = time.monotonic()
            super().connect(sock)

        def _execute_command(self, command: int, sql: Any) -> None:
            self._wait_started = time.monotonic()
            super()._execute_command(command, sql)

        def _left(self) -> float:
            left, why = _wait_limit(limits, self._wait_started, time.monotonic())
            if left <= 0:
                self._force_close()  # a statement may be half-sent: unusable
                raise pymysql.err.OperationalError(
                    2013, f"the database did not answer within {why}; connection closed"
                )
            return left

        def _read_bytes(self, num_bytes: int) -> bytes:
            pending = self._pending
            while len(pending) < num_bytes:
                sock = self._sock
                if sock is None:
                    raise pymysql.err.OperationalError(2013, "the connection was closed")
                sock.settimeout(min(self._left(), _SLICE))
                try:
                    chunk = sock.recv(max(65536, num_bytes - len(pending)))
                except (TimeoutError, InterruptedError):
                    continue  # the next slice, unless the wait ran out
                except OSError as exc:
                    self._force_close()
                    raise pymysql.err.OperationalError(
                        2013, f"lost the connection to the database ({exc})"
                    ) from None
                if not chunk:
                    self._force_close()
                    raise pymysql.err.OperationalError(
                        2013, "lost the connection to the database during a query"
                    )
                pending += chunk
            data = bytes(pending[:num_bytes])
            del pending[:num_bytes]  # cheap: a bytearray drops its head without copying
            return data

        def _write_bytes(self, data: bytes) -> None:
            sock = self._sock
            if sock is None:
                raise pymysql.err.OperationalError(2006, "the connection was closed")
            left = self._left()
            sock.settimeout(None if math.isinf(left) else left)
            try:
                sock.sendall(data)
            except OSError as exc:
                self._force_close()
                raise pymysql.err.OperationalError(
                    2006, f"lost the connection to the database ({exc})"
                ) from None

    connection_class = BoundedConnection if bounded else base

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        waits = [connect_timeout]
        deadline = _capture_deadline.get()
        if deadline is not None:
            waits.append(deadline - time.monotonic())
        if limits.stopping_since is not None:
            waits.append(limits.grace)
        cparams["connect_timeout"] = max(0.001, min(waits))
        return connection_class(*cargs, **cparams)

    @event.listens_for(engine, "connect")
    def _session(dbapi_connection: Any, _record: Any) -> None:
        mariadb = "mariadb" in str(dbapi_connection.get_server_info()).lower()
        bound = (
            f"max_statement_time = {statement:.3f}"
            if mariadb
            else f"max_execution_time = {max(1, round(statement * 1000))}"
        )
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(
                "SET SESSION time_zone = '+00:00',"
                f" innodb_lock_wait_timeout = {lock_wait}, {bound},"
                " sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_TRANS_TABLES')"
            )
        finally:
            cursor.close()


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


CHECKPOINT_ATTEMPTS = 25
CHECKPOINT_WAIT_MS = 200
"""How long one attempt of :func:`checkpoint` waits for readers of an older snapshot."""


def checkpoint(engine: Engine, attempts: int = CHECKPOINT_ATTEMPTS) -> bool:
    """On SQLite, write every committed page into the database file and truncate its ``-wal``
    file to nothing (``PRAGMA wal_checkpoint(TRUNCATE)``): what was deleted (zeroed, with
    ``secure_delete``) is then gone from both files. Readers still on an older snapshot hold
    it back: each attempt waits for them up to :data:`CHECKPOINT_WAIT_MS`, at most
    ``attempts`` times. False when it could not complete; True on other engines (nothing to
    do) and on a database without a WAL."""
    if engine.dialect.name != "sqlite":
        return True
    import sqlite3

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        # the raw connection, outside any transaction: a checkpoint cannot run inside one
        previous = raw.execute("PRAGMA busy_timeout").fetchone()[0]
        raw.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            for _ in range(max(1, attempts)):
                try:
                    busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                except sqlite3.OperationalError:  # locked: another writer holds the file
                    busy = 1
                if not busy:
                    return True
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(previous)}")
    return False


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


@contextmanager
def server_unbounded(conn: Connection) -> Iterator[None]:
    """The server's own statement bound lifted on ``conn`` inside the block (migrations, with
    :func:`unbounded`): PostgreSQL's for the transaction, MySQL's for the session until the
    block ends."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        yield
        return
    if not is_mysql(conn):
        yield
        return
    names = ("max_statement_time", "max_execution_time", "innodb_lock_wait_timeout")
    listed = ", ".join(f"'{name}'" for name in names)
    shown = conn.exec_driver_sql(f"SHOW SESSION VARIABLES WHERE Variable_name IN ({listed})")
    known = {str(row[0]).lower(): row[1] for row in shown.all()}
    lifted = {"max_statement_time": 0, "max_execution_time": 0, "innodb_lock_wait_timeout": 3600}
    conn.exec_driver_sql("SET SESSION " + ", ".join(f"{name} = {lifted[name]}" for name in known))
    try:
        yield
    finally:
        if not conn.invalidated:
            conn.exec_driver_sql(
                "SET SESSION " + ", ".join(f"{name} = {value}" for name, value in known.items())
            )


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


# -- statements each engine writes its own way ------------------------------------------------
#
# PostgreSQL and SQLite share ``INSERT … ON CONFLICT`` and ``UPDATE … RETURNING``. MySQL has
# neither: it has ``ON DUPLICATE KEY UPDATE``, whose assignments (like an ``UPDATE``'s) run
# left to right, each seeing the values set before it; and no ``RETURNING`` (MariaDB's is for
# ``INSERT`` and ``DELETE`` only). Storage modules write these statements through the helpers
# below, one way for every engine.

Assignments = Mapping[str, Any] | Sequence[tuple[str, Any]]
"""``SET`` assignments: column name to value (an SQL expression or a plain value)."""
Update = Assignments | Callable[[Any], Assignments] | None
"""What :func:`upsert` sets on an existing row: assignments, or a function of the proposed
row's columns returning them (``lambda new: {"items": new["items"]}``), or None for nothing."""
_DUPLICATE_KEY = frozenset({1062, 1586})
"""MySQL's error numbers for a duplicate key (``ER_DUP_ENTRY``, ``…_WITH_KEY_NAME``)."""
_INSERT_CHUNK = 50
"""Rows per multi-row ``INSERT`` on MySQL: one statement is all or nothing, and far below the
server's packet limit even for events of 20 kB."""


def _insert(dialect: str, table: Table) -> sqlite.Insert:
    # PostgreSQL's and SQLite's ``Insert`` share the ``on_conflict_*`` and ``excluded`` API used
    # here; the type names one of them for the type checker
    if dialect == "postgresql":
        return cast(sqlite.Insert, postgresql.insert(table))
    return sqlite.insert(table)


def _pairs(assignments: Assignments) -> list[tuple[str, Any]]:
    return list(assignments.items()) if isinstance(assignments, Mapping) else list(assignments)


def _check_order(table: Table, pairs: Sequence[tuple[str, Any]]) -> None:
    """Refuse assignments that MySQL would evaluate with a value set earlier in the statement:
    a column must be assigned after every assignment that reads it."""
    assigned: set[str] = set()
    for name, value in pairs:
        if isinstance(value, ClauseElement):
            read = {
                element.name
                for element in visitors.iterate(value)
                if isinstance(element, Column) and element.table is table
            }
            early = sorted(read & assigned)
            if early:
                raise ValueError(
                    f"{table.name}.{name}: reads {', '.join(early)}, assigned before it; MySQL"
                    " would read the new value: assign it first"
                )
        assigned.add(name)


def _is_duplicate(error: IntegrityError) -> bool:
    args: tuple[Any, ...] = getattr(error.orig, "args", ())
    return bool(args) and args[0] in _DUPLICATE_KEY


def _try_insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> bool:
    """One multi-row ``INSERT`` on MySQL; False (and nothing inserted) on a duplicate key. MySQL
    undoes only the failed statement: the transaction goes on."""
    try:
        conn.execute(insert(table).values([dict(row) for row in rows]))
    except IntegrityError as error:
        if _is_duplicate(error):
            return False
        raise
    return True


def _insert_or_lock(conn: Connection, table: Table, values: Mapping[str, Any]) -> bool:
    """On MySQL, insert a row of a table without an auto-increment key, or lock the one with
    its key; whether it was inserted. Either way the row is locked until the transaction ends.

    Not a plain ``INSERT``: its duplicate-key error leaves a shared lock, and two writers that
    then both want the row's exclusive lock deadlock. An upsert locks exclusively at once; the
    assignment that changes nothing sets ``LAST_INSERT_ID`` to 1, which the answer carries only
    when the row was there (an insert into such a table reports 0).
    """
    first = next(iter(table.primary_key.columns))
    marked = func.IF(func.last_insert_id(1), first, first)
    stmt = mysql.insert(table).values(dict(values)).on_duplicate_key_update([(first.name, marked)])
    return conn.execute(stmt).lastrowid == 0


def upsert(
    conn: Connection | str,
    table: Table,
    values: Mapping[str, Any],
    *,
    update: Update = None,
    key: Sequence[Column[Any]] | None = None,
) -> Insert:
    """``INSERT`` of ``values``; where a row with the same ``key`` (default: the primary key)
    exists, ``SET update`` on it instead, or leave it as it is (``update=None``).

    On MySQL the assignments run in the order given, each seeing the values set before it: list
    a column after every assignment that reads it (a wrong order raises ``ValueError``).
    ``conn`` may be the dialect's name, for a statement built once and kept.
    """
    dialect = conn if isinstance(conn, str) else conn.dialect.name
    target = list(key) if key is not None else list(table.primary_key.columns)
    if dialect in MYSQL:
        upserting = mysql.insert(table).values(values)
        if update is None:
            return upserting.on_duplicate_key_update([(target[0].name, target[0])])
        pairs = _pairs(update(upserting.inserted) if callable(update) else update)
        _check_order(table, pairs)
        return upserting.on_duplicate_key_update(pairs)
    inserting = _insert(dialect, table).values(values)
    if update is None:
        return inserting.on_conflict_do_nothing(index_elements=target)
    pairs = _pairs(update(inserting.excluded) if callable(update) else update)
    return inserting.on_conflict_do_update(index_elements=target, set_=dict(pairs))


def upsert_where(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    update: Assignments,
    where: ColumnElement[bool],
) -> bool:
    """``INSERT`` of ``values``, or, where the row with the same primary key exists and ``where``
    holds on it, ``SET update``; whether a row was written. Two writers racing for one key are
    decided one after the other."""
    key = list(table.primary_key.columns)
    pairs = _pairs(update)
    if not is_mysql(conn):
        stmt = _insert(conn.dialect.name, table).values(values)
        stmt = stmt.on_conflict_do_update(index_elements=key, set_=dict(pairs), where=where)
        return conn.execute(stmt.returning(*key)).first() is not None
    _check_order(table, pairs)
    same = and_(*(column == values[column.name] for column in key))
    found = conn.execute(select(*key).where(same).with_for_update()).first()
    if found is None and _insert_or_lock(conn, table, values):
        return True
    written = conn.execute(update_statement(table).where(same, where).ordered_values(*pairs))
    return bool(written.rowcount == 1)


def insert_new(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: Column[Any]
) -> list[Mapping[str, Any]]:
    """``INSERT`` each of ``rows`` whose ``key`` is in neither the table nor an earlier row;
    the rows inserted. Two writers racing never both insert one key.

    On MySQL, a row of a table without an auto-increment key that was there already is locked
    until the transaction ends (see :func:`_insert_or_lock`): write it next, if need be.
    """
    first: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        first.setdefault(row[key.name], row)
    if not first:
        return []
    if not is_mysql(conn):
        stmt = _insert(conn.dialect.name, table).on_conflict_do_nothing(index_elements=[key])
        inserted = set(conn.execute(stmt.returning(key), list(first.values())).scalars())
        return [row for value, row in first.items() if value in inserted]
    if table.autoincrement_column is None:
        return [row for row in first.values() if _insert_or_lock(conn, table, row)]
    there = set(conn.execute(select(key).where(key.in_(list(first)))).scalars())
    fresh = [row for value, row in first.items() if value not in there]
    done: list[Mapping[str, Any]] = []
    for start in range(0, len(fresh), _INSERT_CHUNK):
        chunk = fresh[start : start + _INSERT_CHUNK]
        if _try_insert(conn, table, chunk):
            done += chunk
        else:  # another writer inserted one of them meanwhile: one by one
            done += [row for row in chunk if _try_insert(conn, table, [row])]
    return done


def update_returning(
    conn: Connection,
    table: Table,
    where: ColumnElement[bool],
    values: Assignments,
    returning: Sequence[ColumnElement[Any]],
    *,
    batch: Select[Any] | None = None,
) -> list[Row[Any]]:
    """``UPDATE`` the rows where ``where`` holds to ``values``; the ``returning`` columns of the
    rows updated (as they are after the update).

    With ``batch`` (a query of the primary key, ordered and limited) only its rows are updated,
    locked for this transaction and skipping rows others hold (see :func:`locked_batch`): two
    claimers never update the same row. On MySQL the rows are read with ``FOR UPDATE``, then
    updated by key: a locked row still matches ``where`` (MySQL refuses a subquery on the table
    being updated, as a condition over the row's neighbours is), and read back.
    """
    [key] = table.primary_key.columns
    pairs = _pairs(values)
    if not is_mysql(conn):
        stmt = update_statement(table)
        if batch is not None:
            locked = locked_batch(batch)
            stmt = stmt.where(key == locked.c[key.name])
        stmt = stmt.where(where).values(dict(pairs)).returning(*returning)
        return list(conn.execute(stmt).all())
    _check_order(table, pairs)
    query = batch if batch is not None else select(key).where(where)
    keys = list(conn.execute(query.with_for_update(skip_locked=batch is not None)).scalars())
    if not keys:
        return []
    conn.execute(update_statement(table).where(key.in_(keys)).ordered_values(*pairs))
    return list(conn.execute(select(*returning).where(key.in_(keys))).all())


def delete_some(conn: Connection, table: Table, where: ColumnElement[bool], limit: int) -> int:
    """``DELETE`` at most ``limit`` rows where ``where`` holds; how many."""
    key = list(table.primary_key.columns)
    batch = select(*key).where(where).limit(limit)
    if is_mysql(conn):
        # MySQL takes neither a LIMIT in an IN subquery nor the table being deleted from in a
        # subquery; a derived table is read whole first
        derived = batch.subquery("batch")
        batch = select(*derived.c)
    target = key[0] if len(key) == 1 else tuple_(*key)
    return int(conn.execute(delete(table).where(target.in_(batch))).rowcount)

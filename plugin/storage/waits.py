"""Bounded waits: every wait on the database ends, whether or not the server answers.

A server that stops answering (frozen, not gone: its connections stay open) is never noticed by
the kernel, and a server-side ``statement_timeout`` cannot fire in a stopped server, so the
client bounds each wait itself: a capture by ``database.capture_timeout`` in all, any other
statement by ``database.statement_timeout``, and, once :func:`stop_waiting` was called
(shutdown), by a short grace. A connection whose wait ran out is closed, since its state is
unknown.

Here are each engine's bounds (:class:`Limits`, kept by :func:`~.engines.make_engine`), the
psycopg and PyMySQL connections that wait on the socket themselves against them, connects given
up at a deadline, the capture's :func:`transaction`, and the bounds lifted for migrations.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import select as io_select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session

from ..config import DatabaseSettings
from .dialects import is_mysql

Bind = Session | Connection | None
"""Where a capture writes: the host's ``Session`` or ``Connection``, or ``None`` for our own."""


@dataclasses.dataclass
class Limits:
    """The client-side bounds of one engine's waits, in seconds."""

    statement: float
    capture: float
    job_busy_ms: int
    write_budget: float
    stopping_since: float | None = None
    """Monotonic time :func:`stop_waiting` was called; from then on waits get ``grace``."""
    grace: float = 2.0


LIMITS: weakref.WeakKeyDictionary[Engine, Limits] = weakref.WeakKeyDictionary()
"""The bounds of each engine :func:`~.engines.make_engine` made; an engine not here (a host's)
is not bounded by the client."""
_capture_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shop_events_capture_deadline", default=None
)
_unbounded: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "shop_events_unbounded", default=False
)
GRACE = 1.0
"""Added to ``statement_timeout`` on the client, so that a live server cancels first."""


def stop_waiting(engine: Engine) -> None:
    """From now on no wait on ``engine`` lasts longer than a short grace (shutdown): a frozen
    database must not keep a stopping process alive. Waits already in progress end too."""
    limits = LIMITS.get(engine)
    if limits is not None and limits.stopping_since is None:
        limits.stopping_since = time.monotonic()


def resume_waiting(engine: Engine) -> None:
    """Undo :func:`stop_waiting`: the usual bounds again (a tracker started after a shutdown)."""
    limits = LIMITS.get(engine)
    if limits is not None:
        limits.stopping_since = None


def _wait_limit(limits: Limits, started: float, now: float) -> tuple[float, str]:
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


def tune_psycopg(engine: Engine, settings: DatabaseSettings, limits: Limits) -> None:
    """Bound every wait of a psycopg connection on the client (see the module), connects
    included, and give each connection the server's ``statement_timeout``."""
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


def tune_pymysql(engine: Engine, settings: DatabaseSettings, limits: Limits) -> None:
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
        limits = LIMITS.get(engine)
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
def _sqlite_capture(engine: Engine, limits: Limits) -> Iterator[Connection]:
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

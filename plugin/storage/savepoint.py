"""A capture's savepoint on the host's server connection, and its writes, sent along with the
host's own statements: no round trip of their own in a captured commit.

A capture joining the host's transaction on PostgreSQL writes inside a savepoint, so that a
failed write (the plugin's tables dropped by the shop's migration, a lock timeout) undoes only
what the capture wrote instead of aborting the shop's whole transaction. Sent on their own, the
savepoint and the write would cost round trips to the server in every captured commit. With
psycopg (3) they travel with other statements, in one pipeline:

- The savepoint is owed, and goes with the block's first statement, whose rows and row count
  the caller reads as usual.
- A write whose result nobody reads (a statement run with the :data:`DEFERRABLE` execution
  option, such as the cart upsert), in a block that says what to do should it fail later
  (``on_late_failure``), is not sent when it is made. It is owed to the connection, and goes
  with the host's ``COMMIT``; or, should the host run another statement first, just before
  that statement, so nothing is ever reordered. It goes after a savepoint of its own: should
  it fail there, the owed writes are rolled back to it, sent again block by block (each in its
  savepoint), the host's transaction goes on and commits, and each block whose write failed
  is told through ``on_late_failure``. A rollback of the host's transaction drops them.

Other drivers (and a first statement that is an ``executemany``) get the savepoint as a
statement of its own and every write at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakSet

from sqlalchemy import Connection, event
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import ExecutionContext

DEFERRABLE = "shop_events_deferrable"
"""Execution option of a write whose result is not read: it may travel with a later statement."""

LateFailure = Callable[[Exception], None]
"""Told the error of a block's write that failed after the block (at the host's commit)."""

_SCOPE = "shop_events_savepoint_scope"
"""Key in the DBAPI connection's ``info``: the block now open on it (a :class:`_Scope`)."""

_OWED = "shop_events_writes_owed"
"""Key in the DBAPI connection's ``info``: the writes of closed blocks not sent yet."""

_BASE = "shop_events_owed"
"""The savepoint before the owed writes: what one of them failing is rolled back to."""

_PIPELINED = "psycopg"
"""The driver whose statements can carry the savepoint and the owed writes (psycopg 3's
pipeline mode)."""

_DEFERRING = True
"""Whether deferrable writes wait for the host's next statement or commit (False: they go at
once, with the block's savepoint; the commit benchmark compares the two)."""

_hooked: WeakSet[Dialect] = WeakSet()
_hooking = threading.Lock()

_Write = tuple[str, Any]
"""A statement and its parameters, as the driver takes them."""


@dataclass
class _Scope:
    """A block open on a connection."""

    name: str
    on_late_failure: LateFailure | None
    sent: bool = False
    """Its savepoint has gone to the server."""
    deferred: list[_Write] = field(default_factory=list)
    """Its deferrable writes, not sent yet."""


@dataclass
class _Owed:
    """The deferrable writes of a block that ended without error, not sent yet."""

    name: str
    writes: list[_Write]
    on_late_failure: LateFailure


@contextmanager
def savepoint(
    conn: Connection | None, name: str, *, on_late_failure: LateFailure | None = None
) -> Iterator[None]:
    """Run the block inside a savepoint of ``conn`` (a host's server connection); an exception
    rolls back to it and propagates. Nothing on SQLite (a failed statement there undoes only
    itself) or without a connection.

    It is not released: the host's commit follows and releases it. A later savepoint of the
    same name hides it, as a nested one would.

    With ``on_late_failure``, the block's :data:`DEFERRABLE` writes may be sent after it (see
    the module); one failing there calls ``on_late_failure(error)`` while the host's commit is
    under way: it must not use the database.
    """
    if conn is None or conn.dialect.name == "sqlite":
        yield
        return
    if conn.dialect.driver != _PIPELINED:
        conn.exec_driver_sql(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
            raise
        return
    _hook(conn.dialect)
    info = conn.info
    outer = info.get(_SCOPE)
    scope = info[_SCOPE] = _Scope(name, on_late_failure)
    try:
        yield
    except BaseException:
        if scope.sent:
            conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
        raise  # writes not sent yet are dropped with the scope
    else:
        if scope.deferred and on_late_failure is not None:
            info.setdefault(_OWED, []).append(_Owed(name, scope.deferred, on_late_failure))
    finally:
        if outer is None:
            info.pop(_SCOPE, None)
        else:
            info[_SCOPE] = outer


def _hook(dialect: Dialect) -> None:
    if dialect in _hooked:
        return
    with _hooking:
        if dialect in _hooked:
            return
        event.listen(dialect, "do_execute", _do_execute)
        event.listen(dialect, "do_execute_no_params", _do_execute_no_params)
        event.listen(dialect, "do_executemany", _do_executemany)
        # no event precedes the driver's commit: the dialect's own method is wrapped, so that
        # the owed writes go with the COMMIT and a failed COMMIT still reaches SQLAlchemy
        dialect.do_commit = _committing(dialect.do_commit)  # type: ignore[method-assign,assignment]
        dialect.do_rollback = _rolling_back(dialect.do_rollback)  # type: ignore[method-assign,assignment]
        _hooked.add(dialect)


def _committing(commit: Callable[[Any], None]) -> Callable[[Any], None]:
    def do_commit(dbapi_connection: Any) -> None:
        owed = dbapi_connection.info.pop(_OWED, None)
        if owed is None:
            commit(dbapi_connection)
            return
        raw = dbapi_connection.driver_connection
        if _in_transaction(raw):
            _send(raw, owed, commit=True)
            return
        commit(dbapi_connection)
        # not expected (the transaction was ended behind SQLAlchemy's back): what was owed is lost
        for block in owed:
            block.on_late_failure(RuntimeError("the transaction ended before the write was sent"))

    return do_commit


def _rolling_back(rollback: Callable[[Any], None]) -> Callable[[Any], None]:
    def do_rollback(dbapi_connection: Any) -> None:
        dbapi_connection.info.pop(_OWED, None)
        rollback(dbapi_connection)

    return do_rollback


def _in_transaction(raw: Any) -> bool:
    from psycopg.pq import TransactionStatus

    return bool(raw.info.transaction_status == TransactionStatus.INTRANS)


def _failed_inside(raw: Any) -> bool:
    """After an error: the transaction is still open (a statement failed; a COMMIT queued
    after it was skipped), not ended by a failed COMMIT nor lost with the connection."""
    from psycopg.pq import TransactionStatus

    return bool(raw.info.transaction_status == TransactionStatus.INERROR)


def _send(raw: Any, owed: list[_Owed], *, commit: bool = False) -> None:
    """The owed writes (and the COMMIT) in one pipeline; block by block should one fail."""
    import psycopg

    cursor = raw.cursor()
    try:
        try:
            with raw.pipeline():
                cursor.execute(f"SAVEPOINT {_BASE}")
                for block in owed:
                    for statement, parameters in block.writes:
                        cursor.execute(statement, parameters)
                if commit:
                    cursor.execute("COMMIT")
            return
        except psycopg.Error:
            if not _failed_inside(raw):
                raise
        cursor.execute(f"ROLLBACK TO SAVEPOINT {_BASE}")
        for block in owed:
            try:
                with raw.pipeline():
                    cursor.execute(f"SAVEPOINT {block.name}")
                    for statement, parameters in block.writes:
                        cursor.execute(statement, parameters)
            except psycopg.Error as exc:
                if not _failed_inside(raw):
                    raise
                cursor.execute(f"ROLLBACK TO SAVEPOINT {block.name}")
                block.on_late_failure(exc)
        if commit:
            raw.commit()
    finally:
        cursor.close()


def _state(context: Any) -> tuple[dict[Any, Any] | None, _Scope | None]:
    root = getattr(context, "root_connection", None)
    if root is None:
        return None, None
    info: dict[Any, Any] = root.info
    return info, info.get(_SCOPE)


def _do_execute(
    cursor: Any, statement: str, parameters: Mapping[str, Any] | Sequence[Any], context: Any
) -> bool:
    return _execute(cursor, statement, parameters, context)


def _do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
    return _execute(cursor, statement, None, context)


def _execute(
    cursor: Any,
    statement: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    context: ExecutionContext,
) -> bool:
    """True when the statement was handled here (sent with what it carries, or deferred)."""
    info, scope = _state(context)
    if info is None or (scope is None and _OWED not in info):
        return False
    raw = cursor.connection
    if (
        _DEFERRING
        and scope is not None
        and not scope.sent
        and scope.on_late_failure is not None
        and context.execution_options.get(DEFERRABLE)
        and _in_transaction(raw)
    ):
        scope.deferred.append((statement, parameters))
        return True
    return _catch_up(cursor, info, scope, (statement, parameters))


def _do_executemany(cursor: Any, statement: str, parameters: Sequence[Any], context: Any) -> bool:
    info, scope = _state(context)
    if info is not None:
        _catch_up(cursor, info, scope, None)
    return False  # the statement itself goes as it would


def _catch_up(
    cursor: Any, info: dict[Any, Any], scope: _Scope | None, statement: _Write | None
) -> bool:
    """Before ``statement`` goes: what closed blocks owe, then the open block's savepoint and
    its held writes, in one pipeline with ``statement`` when given. True when it was sent."""
    owed = info.pop(_OWED, None)
    if owed is not None:
        _send(cursor.connection, owed)
    if scope is None or scope.sent:
        return False  # the statement goes as it would
    scope.sent = True
    held, scope.deferred = scope.deferred, []
    with cursor.connection.pipeline():
        cursor.execute(f"SAVEPOINT {scope.name}")
        for write, write_parameters in held:
            cursor.execute(write, write_parameters)
        if statement is None:
            return False
        cursor.execute(*statement)  # last: the cursor holds its result
    return True

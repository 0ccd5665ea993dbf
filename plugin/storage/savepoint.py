"""A savepoint that travels with the statement after it: one round trip, not two.

A capture joining the host's transaction on PostgreSQL writes inside a savepoint, so that a
failed write (the plugin's tables dropped by the shop's migration, a lock timeout) undoes only
what the capture wrote instead of aborting the shop's whole transaction. Sent on its own, the
savepoint costs one more round trip to the server in every captured commit. With psycopg (3)
it is owed instead, and goes in one pipeline with the next statement on that connection, whose
rows and row count the caller reads as usual. Other drivers (and a first statement that is an
``executemany``) get the savepoint as a statement of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from weakref import WeakSet

from sqlalchemy import Connection, event
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import ExecutionContext

_OWED = "shop_events_savepoint_owed"
"""Key in the DBAPI connection's ``info``: the name of the savepoint its next statement sends."""

_PIPELINED = "psycopg"
"""The driver whose next statement can carry the savepoint (psycopg 3's pipeline mode)."""

_hooked: WeakSet[Dialect] = WeakSet()
_hooking = threading.Lock()


@contextmanager
def savepoint(conn: Connection | None, name: str) -> Iterator[None]:
    """Run the block inside a savepoint of ``conn`` (a host's server connection); an exception
    rolls back to it and propagates. Nothing on SQLite (a failed statement there undoes only
    itself) or without a connection.

    It is not released: the host's commit follows and releases it. A later savepoint of the
    same name hides it, as a nested one would.
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
    info[_OWED] = name
    try:
        yield
    except BaseException:
        if info.pop(_OWED, None) is None:  # a statement went: the savepoint was set with it
            conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
        raise
    finally:
        info.pop(_OWED, None)  # nothing was written: no savepoint is needed


def _hook(dialect: Dialect) -> None:
    if dialect in _hooked:
        return
    with _hooking:
        if dialect in _hooked:
            return
        event.listen(dialect, "do_execute", _do_execute)
        event.listen(dialect, "do_execute_no_params", _do_execute_no_params)
        event.listen(dialect, "do_executemany", _do_executemany)
        _hooked.add(dialect)


def _owed(context: ExecutionContext) -> str | None:
    root = getattr(context, "root_connection", None)
    if root is None:
        return None
    name: str | None = root.info.pop(_OWED, None)
    return name


def _do_execute(
    cursor: Any, statement: str, parameters: Mapping[str, Any] | Sequence[Any], context: Any
) -> bool:
    name = _owed(context)
    if name is None:
        return False
    _with_savepoint(cursor, name, statement, parameters)
    return True


def _do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
    name = _owed(context)
    if name is None:
        return False
    _with_savepoint(cursor, name, statement, None)
    return True


def _do_executemany(cursor: Any, statement: str, parameters: Sequence[Any], context: Any) -> bool:
    name = _owed(context)
    if name is not None:
        cursor.execute(f"SAVEPOINT {name}")
    return False  # the statement itself goes as it would


def _with_savepoint(
    cursor: Any,
    name: str,
    statement: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
) -> None:
    """Send the savepoint and the statement in one pipeline: one round trip, the statement's
    server-side binding and prepared plan kept (a query of two statements would be bound on
    the client, parsed and planned at every capture, which costs more than the round trip).
    The cursor holds the statement's result."""
    with cursor.connection.pipeline():
        cursor.execute(f"SAVEPOINT {name}")
        cursor.execute(statement, parameters)

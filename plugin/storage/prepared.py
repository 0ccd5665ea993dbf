"""Writes on the host's commit path, compiled once per dialect and sent as the driver's own SQL.

For a small write, SQLAlchemy's work around each execution (the statement's cache key, its
parameters gathered, converted and put in order, a result set up) costs the host's request a
few times what the database spends running it. A :class:`Prepared` statement does that work
once per dialect: the SQL, the order of its parameters and their types' conversions are kept,
and each execution hands the converted values to :meth:`Connection.exec_driver_sql`. That is
still an execution of the connection: its events, the statement's execution options and the
wrapping of the driver's errors are those of any other statement.

Only a statement whose every parameter is a value the caller passes qualifies: no column
default computed in Python, no expanding ``IN``, no parameter rendered into the SQL. Others are
refused (``ValueError``) when first compiled for a dialect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, CursorResult
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

Converter = Callable[[Any], Any]


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled for one dialect, with what turns the caller's values into the
    driver's parameters."""

    sql: str
    names: frozenset[str]
    order: tuple[str, ...] | None
    """The parameters' order for a positional paramstyle (a name may come twice); None when
    the driver takes them by name."""
    converters: tuple[tuple[str, Converter], ...]
    options: Mapping[str, Any]

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        if values.keys() != self.names:
            raise TypeError(
                f"parameters {sorted(values)} given, {sorted(self.names)} expected: "
                f"{self.sql[:60]}…"
            )
        params = dict(values)
        for name, convert in self.converters:
            params[name] = convert(params[name])
        return conn.exec_driver_sql(
            self.sql,
            params if self.order is None else tuple(params[name] for name in self.order),
            execution_options=self.options,
        )


class Prepared:
    """A statement built by ``build(dialect_name)``, compiled at its first execution on each
    dialect and run as the driver's SQL thereafter."""

    def __init__(self, build: Callable[[str], UpdateBase]) -> None:
        self._build = build
        self._compiled: WeakKeyDictionary[Dialect, _Compiled] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        """Run the statement on ``conn`` with ``values``, one for each of its parameters."""
        compiled = self._compiled.get(conn.dialect)
        if compiled is None:
            compiled = _compile(self._build(conn.dialect.name), conn.dialect)
            with self._lock:
                self._compiled[conn.dialect] = compiled
        return compiled.execute(conn, values)


def _compile(statement: UpdateBase, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    computed = sorted(
        {
            *(column.key for column in [*compiled.insert_prefetch, *compiled.update_prefetch]),
            *(bind.key for bind in compiled.literal_execute_params),
            *(bind.key for bind in compiled.post_compile_params),
            *compiled.escaped_bind_names,
        }
    )
    if computed:
        raise ValueError(
            f"{str(compiled)[:60]}…: only a statement whose every parameter is a value passed "
            f"by name can be prepared, not one computing {', '.join(computed)}"
        )
    converters: list[tuple[str, Converter]] = []
    for name, bind in compiled.binds.items():
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if convert is not None:
            converters.append((name, convert))
    return _Compiled(
        sql=compiled.string,
        names=frozenset(compiled.binds),
        order=tuple(compiled.positiontup or ()) if compiled.positional else None,
        converters=tuple(converters),
        options=statement.get_execution_options(),
    )


__all__ = ["Prepared"]

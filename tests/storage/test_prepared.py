"""Prepared statements: compiled once per dialect, run as the driver's SQL with their values
converted as SQLAlchemy converts them, and refused when they need more than passed values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from shop_events.storage.prepared import Prepared
from shop_events.storage.tables import UTCDateTime
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

OPTION = "tests_marked"

metadata = MetaData()
rows = Table(
    "prepared_rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("step", Integer, nullable=False, default=0),
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = create_engine(database_url)
    metadata.create_all(made)
    yield made
    made.dispose()


def _insert(_dialect: str) -> Any:
    """A row, its time bound twice (as the cart upsert binds ``now``)."""
    at = bindparam("at", type_=UTCDateTime)
    return (
        insert(rows)
        .values(id=bindparam("id"), name=bindparam("name"), at=at, step=bindparam("step"))
        .execution_options(**{OPTION: True})
    )


INSERT = Prepared(_insert)


def test_values_are_converted_as_sqlalchemy_converts_them_on_each_engine(engine: Engine) -> None:
    at = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    seen: list[dict[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def options(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any):
        if statement.startswith("INSERT INTO prepared_rows"):
            seen.append(dict(context.execution_options))

    with engine.begin() as conn:
        INSERT.execute(conn, {"id": 1, "name": "a ' % quote", "at": at, "step": 2})
        INSERT.execute(conn, {"id": 2, "name": "second", "at": at, "step": 0})
    with engine.connect() as conn:
        found = conn.execute(select(rows).order_by(rows.c.id)).all()
    assert [tuple(r) for r in found] == [
        (1, "a ' % quote", at.astimezone(UTC), 2),
        (2, "second", at.astimezone(UTC), 0),
    ]
    assert [s.get(OPTION) for s in seen] == [True, True]  # the statement's own options


def test_the_drivers_errors_come_wrapped_as_for_any_statement(engine: Engine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        INSERT.execute(conn, {"id": 1, "name": "a", "at": at, "step": 0})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        INSERT.execute(conn, {"id": 1, "name": "again", "at": at, "step": 0})


def test_a_naive_time_is_refused_by_the_type_as_in_any_statement() -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        INSERT.execute(conn, {"id": 1, "name": "a", "at": datetime(2026, 1, 1), "step": 0})


def test_missing_or_extra_values_name_what_is_expected() -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        with pytest.raises(TypeError, match=r"\['at', 'id', 'name'\] given, .*'step'"):
            INSERT.execute(conn, {"id": 1, "name": "a", "at": at})
        with pytest.raises(TypeError, match="'other'"):
            INSERT.execute(conn, {"id": 1, "name": "a", "at": at, "step": 0, "other": 1})


def test_a_statement_computing_a_value_itself_is_refused() -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    defaulted = Prepared(lambda _d: insert(rows).values(id=bindparam("id"), name="n", at=None))
    expanding = Prepared(
        lambda _d: (
            update(rows)
            .where(rows.c.id.in_(bindparam("ids", expanding=True)))
            .values(name=bindparam("name"))
        )
    )
    with engine.begin() as conn:
        with pytest.raises(ValueError, match="not one computing step"):
            defaulted.execute(conn, {"id": 1})
        with pytest.raises(ValueError, match="not one computing ids"):
            expanding.execute(conn, {"ids": [1], "name": "n"})

"""A capture's savepoint on the host's server connection: what it undoes, and what it leaves
alone. (On SQLite it is nothing: a failed statement there undoes only itself.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shop_events.storage.savepoint import savepoint
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import SERVER_ENGINES

NAME = "shop_events_capture"

ON_SERVERS = pytest.mark.parametrize("database_url", SERVER_ENGINES, indirect=True)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A host's engine on each engine's database, with a table of its own."""
    made = create_engine(database_url)
    with made.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE host_rows (id INTEGER PRIMARY KEY, name VARCHAR(20))")
    yield made
    made.dispose()


def names(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT name FROM host_rows ORDER BY id")).scalars())


def add(conn: Connection, row_id: int, name: str) -> None:
    conn.execute(
        text("INSERT INTO host_rows (id, name) VALUES (:id, :name)"), {"id": row_id, "name": name}
    )


@ON_SERVERS
def test_a_failed_write_undoes_only_the_block_and_the_host_commits_the_rest(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        add(conn, 1, "before")
        with pytest.raises(DBAPIError), savepoint(conn, NAME):
            add(conn, 2, "captured")
            conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")
        add(conn, 3, "after")  # PostgreSQL: the transaction is not aborted
    with engine.connect() as conn:
        assert names(conn) == ["before", "after"]


@ON_SERVERS
def test_a_first_statement_that_fails_is_undone_with_the_savepoint_it_carried(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        add(conn, 1, "before")
        with pytest.raises(DBAPIError), savepoint(conn, NAME):
            add(conn, 1, "duplicate key")
        add(conn, 2, "after")
    with engine.connect() as conn:
        assert names(conn) == ["before", "after"]


@ON_SERVERS
def test_the_statement_that_carries_the_savepoint_gives_its_rows_and_its_count(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        add(conn, 1, "a")
        add(conn, 2, "b")
        with savepoint(conn, NAME):
            rows = conn.execute(text("SELECT id, name FROM host_rows ORDER BY id")).all()
        assert [tuple(row) for row in rows] == [(1, "a"), (2, "b")]
        with savepoint(conn, NAME):
            changed = conn.execute(text("UPDATE host_rows SET name = 'c' WHERE id >= 2"))
        assert changed.rowcount == 1
        with savepoint(conn, NAME):
            plain = conn.exec_driver_sql("SELECT count(*) FROM host_rows").scalar()
        assert plain == 2
        assert names(conn) == ["a", "c"]


@ON_SERVERS
def test_many_rows_written_first_in_the_block_are_undone_with_it(engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(DBAPIError), savepoint(conn, NAME):
            conn.execute(
                text("INSERT INTO host_rows (id, name) VALUES (:id, :name)"),
                [{"id": n, "name": f"row {n}"} for n in range(5)],
            )
            conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")
        add(conn, 9, "after")
    with engine.connect() as conn:
        assert names(conn) == ["after"]


@ON_SERVERS
def test_a_block_that_fails_before_writing_raises_its_own_error_and_owes_nothing(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        add(conn, 1, "before")
        with pytest.raises(ValueError, match="not a cart"), savepoint(conn, NAME):
            raise ValueError("not a cart")
        with savepoint(conn, NAME):
            pass  # nothing written: nothing sent
        add(conn, 2, "after")  # goes alone: no savepoint rides with it
        assert "shop_events_savepoint_owed" not in conn.info
    with engine.connect() as conn:
        assert names(conn) == ["before", "after"]


@pytest.mark.parametrize("database_url", SERVER_ENGINES[:1], indirect=True)
def test_on_postgresql_no_savepoint_is_set_by_a_block_that_wrote_nothing(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            with savepoint(conn, NAME):
                pass
            conn.exec_driver_sql("SELECT 1")
            with pytest.raises(DBAPIError, match="savepoint"):
                conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {NAME}")
            conn.rollback()
    finally:
        engine.dispose()

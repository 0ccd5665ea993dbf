"""A capture's savepoint on the host's server connection: what it undoes, and what it leaves
alone; and the writes that travel with the host's commit. (On SQLite it is nothing: a failed
statement there undoes only itself.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from shop_events.storage.savepoint import DEFERRABLE, savepoint
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from tests.conftest import SERVER_ENGINES

NAME = "shop_events_capture"

ON_SERVERS = pytest.mark.parametrize("database_url", SERVER_ENGINES, indirect=True)
ON_POSTGRESQL = pytest.mark.parametrize("database_url", SERVER_ENGINES[:1], indirect=True)
"""The driver whose writes travel with the commit (psycopg); elsewhere they go at once."""


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A host's engine on each engine's database, with a table of its own."""
    made = create_engine(database_url)
    with made.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE host_rows (id INTEGER PRIMARY KEY, name VARCHAR(40))")
    yield made
    made.dispose()


def names(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT name FROM host_rows ORDER BY id")).scalars())


def add(conn: Connection, row_id: int, name: str) -> None:
    conn.execute(
        text("INSERT INTO host_rows (id, name) VALUES (:id, :name)"), {"id": row_id, "name": name}
    )


def put(conn: Connection, row_id: int, name: str) -> None:
    """A capture's write whose result nobody reads (it may go with the host's commit)."""
    conn.execute(
        text("INSERT INTO host_rows (id, name) VALUES (:id, :name)").execution_options(
            **{DEFERRABLE: True}
        ),
        {"id": row_id, "name": name},
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
        assert "shop_events_savepoint_scope" not in conn.info
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


# -- writes that go with the host's commit -----------------------------------------------------


def capture(conn: Connection, row_id: int, name: str, failures: list[Exception]) -> None:
    """A capture's block: one deferrable write; a late failure is put in ``failures``."""
    with savepoint(conn, NAME, on_late_failure=failures.append):
        put(conn, row_id, name)


@ON_SERVERS
def test_a_deferred_write_is_committed_with_the_host_and_seen_by_its_later_statements(
    engine: Engine,
) -> None:
    failures: list[Exception] = []
    with engine.begin() as conn:
        add(conn, 1, "before")
        capture(conn, 2, "captured", failures)
        assert names(conn) == ["before", "captured"]  # sent before the host's next statement
        capture(conn, 3, "captured, sent with the commit", failures)
    with engine.connect() as conn:
        assert names(conn) == ["before", "captured", "captured, sent with the commit"]
    assert failures == []


@ON_POSTGRESQL
def test_a_deferred_write_that_fails_at_the_commit_is_undone_alone_and_reported(
    engine: Engine,
) -> None:
    failures: list[Exception] = []
    with engine.begin() as conn:
        add(conn, 1, "before")
        for row_id, name in ((2, "kept"), (1, "duplicate key"), (3, "kept too")):
            capture(conn, row_id, name, failures)
        # the commit below sends the three; the second fails, the shop's commit goes on
    with engine.connect() as conn:
        assert names(conn) == ["before", "kept", "kept too"]
    assert len(failures) == 1
    assert "host_rows_pkey" in str(failures[0])


@ON_POSTGRESQL
def test_a_deferred_write_that_fails_before_a_later_statement_lets_that_statement_run(
    engine: Engine,
) -> None:
    failures: list[Exception] = []
    with engine.begin() as conn:
        add(conn, 1, "before")
        capture(conn, 1, "duplicate key", failures)
        add(conn, 2, "after")
        assert names(conn) == ["before", "after"]
    assert len(failures) == 1
    with engine.connect() as conn:
        assert names(conn) == ["before", "after"]


@ON_POSTGRESQL
def test_a_failed_commit_is_the_hosts_error_with_nothing_written_or_reported(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE host_refs (id INTEGER PRIMARY KEY, row_id INTEGER REFERENCES "
            "host_rows (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    failures: list[Exception] = []
    with pytest.raises(IntegrityError, match="host_refs"), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO host_refs VALUES (1, 99)")  # checked at the commit
        capture(conn, 1, "captured", failures)
    with engine.connect() as conn:
        assert names(conn) == []
        assert conn.exec_driver_sql("SELECT count(*) FROM host_refs").scalar() == 0
    assert failures == []


@ON_SERVERS
def test_a_rollback_drops_what_was_owed_and_the_next_transaction_does_not_send_it(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)  # one connection, reused
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE host_rows (id INTEGER PRIMARY KEY, name VARCHAR(40))"
            )
        with engine.connect() as conn:
            assert names(conn) == []  # the transaction has begun: the write may be owed
            with savepoint(conn, NAME, on_late_failure=pytest.fail):
                put(conn, 1, "rolled back")
            conn.rollback()
            add(conn, 2, "next transaction")
            conn.commit()
        with engine.connect() as conn:
            assert names(conn) == ["next transaction"]
            with savepoint(conn, NAME, on_late_failure=pytest.fail):
                put(conn, 3, "never committed")
        # closed without a commit: the pool's reset rolls it back
        with engine.begin() as conn:
            add(conn, 4, "on the same connection")
        with engine.connect() as conn:
            assert names(conn) == ["next transaction", "on the same connection"]
    finally:
        engine.dispose()


@ON_SERVERS
def test_a_block_that_fails_after_a_deferred_write_drops_it(engine: Engine) -> None:
    with engine.begin() as conn:
        assert names(conn) == []  # the transaction has begun: the writes may be deferred
        with (
            pytest.raises(ValueError, match="bad item"),
            savepoint(conn, NAME, on_late_failure=pytest.fail),
        ):
            put(conn, 1, "not sent")
            raise ValueError("bad item")
        with pytest.raises(DBAPIError), savepoint(conn, NAME, on_late_failure=pytest.fail):
            put(conn, 2, "sent with the next")
            conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")
        add(conn, 3, "after")
    with engine.connect() as conn:
        assert names(conn) == ["after"]


@ON_POSTGRESQL
def test_on_postgresql_the_deferred_write_and_the_commit_are_one_round_trip(
    engine: Engine, tmp_path: Path
) -> None:
    from psycopg import pq

    trace = tmp_path / "libpq.trace"
    with engine.connect() as conn, trace.open("w") as out:
        add(conn, 1, "before")
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.pgconn.trace(out.fileno())
        raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            with savepoint(conn, NAME, on_late_failure=pytest.fail):
                put(conn, 2, "captured")
            conn.commit()
        finally:
            raw.pgconn.untrace()
    lines = [line.split("\t") for line in trace.read_text().splitlines() if line.strip()]
    sent = [n for n, line in enumerate(lines) if line[0] == "F"]
    answered = [n for n, line in enumerate(lines) if line[0] == "B"]
    insert = next(n for n in sent if "INSERT INTO host_rows" in lines[n][-1])
    commit = next(n for n in sent if '"COMMIT"' in lines[n][-1])
    assert insert < commit
    assert not [n for n in answered if n < commit], "the server answered before the COMMIT went"
    with engine.connect() as conn:
        assert names(conn) == ["before", "captured"]

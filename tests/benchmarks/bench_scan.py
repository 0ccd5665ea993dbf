"""Scan cost: ``tracker.scan()`` finding and enqueueing 1,000 due carts among 10k and 1M carts.

Each size gets a fresh SQLite file (WAL, as ``make_engine`` configures it),
migrated, then filled with ``executemany`` in large batches straight into
the carts table: all carts ``active`` with a unique email, 1,000 of them idle for
longer than ``abandoned_cart.after`` (due), the rest touched within it (not due). ``ANALYZE``
and a WAL checkpoint follow. ``abandoned_cart.contact_interval`` is ``0s``, so the frequency
cap never interferes.

Each size is scanned several times, the sizes taking turns so that changes in the machine's
load hit all of them alike. Before every scan but the first, the carts the previous scan
abandoned are set ``active`` again and the outbox is emptied, so every scan does the same work.
If the scan is index-driven its time barely depends on the table size; the goal is big/small
within 2×. The ``EXPLAIN QUERY PLAN`` printed is that of the statement the scanner itself sent
(caught with an engine event), so it shows the plan actually used.

Run: ``python tests/benchmarks/bench_scan.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from shop_events import Settings, Tracker
from shop_events.storage.enums import FlowState
from shop_events.storage.tables import carts, outbox
from sqlalchemy import Connection, Engine, delete, event, func, select, update

DUE = 1000
AFTER = timedelta(hours=1)
ITEMS_JSON = '[{"name":"X","price":"1"}]'
CONTENT_HASH = "0" * 64
GOAL_RATIO = 2.0


def cart_rows(total: int, due: int, now: datetime, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows ``start``–``stop`` of ``total`` carts; every ``total // due``-th one is due."""
    step = total // due
    rows = []
    for i in range(start, stop):
        if i % step == 0 and i // step < due:
            at = now - AFTER - timedelta(minutes=5, seconds=i % 3600)
        else:
            at = now - timedelta(seconds=i % int(AFTER.total_seconds() * 0.9))
        rows.append(
            {
                "cart_id": f"cart-{i:07d}",
                "email": f"shopper{i:07d}@example.com",
                "items": ITEMS_JSON,
                "currency": "EUR",
                "restore_url": None,
                "content_hash": CONTENT_HASH,
                "version": 1,
                "state": FlowState.ACTIVE.value,
                "skip_reason": None,
                "last_activity_at": at,
                "created_at": at,
            }
        )
    return rows


def batches(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``range(total)`` in steps of ``size``."""
    for start in range(0, total, size):
        yield start, min(start + size, total)


def populate(engine: Engine, total: int, now: datetime, batch: int) -> float:
    """Fill the carts table; one transaction and one ``executemany`` per batch. Seconds taken."""
    started = time.perf_counter()
    for start, stop in batches(total, batch):
        rows = cart_rows(total, DUE, now, start, stop)
        with engine.begin() as conn:
            conn.execute(carts.insert(), rows)
    return time.perf_counter() - started


def reset_due(conn: Connection) -> None:
    """Undo a scan: abandoned carts become active again and the outbox is emptied."""
    scanned = (FlowState.ABANDONED.value, FlowState.SUPPRESSED.value)
    conn.execute(
        update(carts)
        .where(carts.c.state.in_(scanned))
        .values(state=FlowState.ACTIVE.value, skip_reason=None)
    )
    conn.execute(delete(outbox))


class ScanWatch:
    """Watches the SQL one scan sends: catches the due-cart statement and times SQL by kind.

    The due-cart statement is the first one naming ``shop_events_carts`` and
    ``last_activity_at <`` (the claim of a batch: ``UPDATE … WHERE cart_id IN (SELECT …)``
    or ``WITH batch AS (SELECT …) UPDATE …``); it is kept with its parameters for
    ``EXPLAIN QUERY PLAN``. Time spent in the database driver is summed per kind: ``claim``
    (those due-cart statements), ``outbox`` (the outbox inserts) and ``other``; ``commit``
    is the time from each ``COMMIT`` until its connection is back in the pool.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sql: str | None = None
        self.params: Any = None
        self.ns = {"claim": 0, "outbox": 0, "other": 0, "commit": 0}
        self._started = 0
        self._committing = 0

    def __enter__(self) -> ScanWatch:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine.pool, "checkin", self._checkin)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine.pool, "checkin", self._checkin)

    @staticmethod
    def kind(statement: str) -> str:
        """``claim``, ``outbox`` or ``other``."""
        if "shop_events_carts" in statement and "last_activity_at <" in statement:
            return "claim"
        if statement.startswith("INSERT INTO shop_events_outbox"):
            return "outbox"
        return "other"

    def _before(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self.sql is None and self.kind(statement) == "claim":
            self.sql, self.params = statement, parameters
        self._started = time.perf_counter_ns()

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.ns[self.kind(statement)] += time.perf_counter_ns() - self._started

    def _commit(self, *_: Any) -> None:
        self._committing = time.perf_counter_ns()

    def _checkin(self, *_: Any) -> None:
        if self._committing:
            self.ns["commit"] += time.perf_counter_ns() - self._committing
            self._committing = 0


def query_plan(engine: Engine, sql: str, params: Any) -> list[str]:
    """``EXPLAIN QUERY PLAN`` of ``sql``, indented as SQLite's shell draws the tree."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + str(detail))
    return lines


class SizeCase:
    """One table size: its database, its tracker, and the figures of its scans."""

    def __init__(self, total: int, base: Path) -> None:
        self.total = total
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.db = base / f"scan_{total}.db"
        settings = Settings.load(
            {
                "database": {"url": f"sqlite:///{self.db}"},
                "scheduler": {"enabled": False},
                "api": {"base_url": "http://127.0.0.1:9/api"},
                "abandoned_cart": {"after": "1h", "contact_interval": "0s"},
            }
        )
        self.tracker = Tracker(settings, clock=lambda: self.now)
        self.populate_s = 0.0
        self.analyze_s = 0.0
        self.scan_ms: list[float] = []
        self.enqueued: list[int] = []
        self.claim_ms: list[float] = []
        """Time in SQLite running the due-cart statements, per scan."""
        self.outbox_ms: list[float] = []
        """Time in SQLite running the outbox inserts, per scan."""
        self.other_ms: list[float] = []
        """Time in SQLite running any other statement (``BEGIN``, look-ups), per scan."""
        self.commit_ms: list[float] = []
        """Time committing the scan's transactions, per scan."""
        self.plan: list[str] = []

    def build(self, batch: int) -> None:
        """Migrate, fill the carts table, ``ANALYZE``."""
        engine = self.tracker.engine
        self.tracker.migrate()
        self.populate_s = populate(engine, self.total, self.now, batch)
        started = time.perf_counter()
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        self.analyze_s = time.perf_counter() - started
        # Every size starts its scans with an empty WAL. Outside a transaction: the engine's
        # connections begin one (BEGIN IMMEDIATE) on their first statement.
        raw = engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
        with engine.connect() as conn:
            counted = conn.execute(select(func.count()).select_from(carts)).scalar_one()
        assert counted == self.total, f"populated {counted} carts, expected {self.total}"

    def scan_once(self) -> None:
        """Undo the previous scan, if any, then time one ``tracker.scan()``."""
        engine = self.tracker.engine
        if self.scan_ms:
            with engine.begin() as conn:
                reset_due(conn)
        with ScanWatch(engine) as watch:
            started = time.perf_counter()
            result = self.tracker.scan()
            self.scan_ms.append((time.perf_counter() - started) * 1000)
        self.enqueued.append(result.enqueued)
        self.claim_ms.append(watch.ns["claim"] / 1e6)
        self.outbox_ms.append(watch.ns["outbox"] / 1e6)
        self.other_ms.append(watch.ns["other"] / 1e6)
        self.commit_ms.append(watch.ns["commit"] / 1e6)
        if not self.plan and watch.sql is not None:
            sql = " ".join(watch.sql.split())
            self.plan = [sql, *query_plan(engine, watch.sql, watch.params)]

    @property
    def db_mb(self) -> float:
        """Size of the database file in MB."""
        return self.db.stat().st_size / 1e6

    def close(self) -> None:
        """Stop the tracker and close its connections."""
        self.tracker.shutdown()
        self.tracker.engine.dispose()


def environment() -> str:
    """One line naming the versions that shape the figures."""
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"SQLAlchemy {sqlalchemy.__version__}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; exit 1 if a scan did not enqueue 1,000."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 1_000_000], help="table sizes"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed scans per size")
    parser.add_argument("--batch", type=int, default=50_000, help="rows per executemany")
    args = parser.parse_args(argv)

    print(f"bench_scan: {environment()}")
    print(
        f"{DUE:,} due carts per size; abandoned_cart.after = 1h, contact_interval = 0s, "
        f"scan_batch = {Settings().abandoned_cart.scan_batch}; {args.runs} scans per size"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        print(f"database files in {tmp}")
        cases = [SizeCase(total, Path(tmp)) for total in args.sizes]
        try:
            for case in cases:
                case.build(args.batch)
                print(
                    f"{case.total:>10,} carts: populated in {case.populate_s:.1f} s "
                    f"({case.total / case.populate_s:,.0f} rows/s), "
                    f"ANALYZE {case.analyze_s:.2f} s, file {case.db_mb:.0f} MB"
                )
            # Sizes take turns, so changes in the machine's load hit every size alike.
            for _ in range(args.runs):
                for case in cases:
                    case.scan_once()
        finally:
            for case in cases:
                case.close()
    elapsed = time.perf_counter() - started

    for case in cases:
        runs = ", ".join(f"{ms:.1f}" for ms in case.scan_ms)
        print(f"\n{case.total:>10,} carts: scan ms per run {runs}; enqueued {case.enqueued}")
        print(
            f"{'':>18}medians in SQLite: due-cart statements "
            f"{statistics.median(case.claim_ms):.1f} ms, outbox inserts "
            f"{statistics.median(case.outbox_ms):.1f} ms, other statements "
            f"{statistics.median(case.other_ms):.1f} ms, COMMITs "
            f"{statistics.median(case.commit_ms):.1f} ms; the rest is Python"
        )

    print(f"\n{'carts':>10} {'populate s':>11} {'scan ms median':>15} {'min':>7} {'enqueued':>9}")
    for case in cases:
        print(
            f"{case.total:>10,} {case.populate_s:>11.1f} "
            f"{statistics.median(case.scan_ms):>15.1f} {min(case.scan_ms):>7.1f} "
            f"{min(case.enqueued):>9,}"
        )
    small, big = cases[0], cases[-1]
    ratio = statistics.median(big.scan_ms) / statistics.median(small.scan_ms)
    ratio_min = min(big.scan_ms) / min(small.scan_ms)
    verdict = "within" if ratio <= GOAL_RATIO else "ABOVE"
    print(
        f"ratio {big.total:,} / {small.total:,}: {ratio:.2f} (medians), {ratio_min:.2f} (minima) "
        f"→ {verdict} goal (≤ {GOAL_RATIO:g}×, on medians)"
    )
    print(f"\nEXPLAIN QUERY PLAN of the scanner's due-cart statement ({big.total:,} carts):")
    for line in big.plan:
        print(f"  {line}")
    indexed = any("USING INDEX ix_shop_events_carts_due" in line for line in big.plan[1:])
    full_scan = any(line.strip() == "SCAN shop_events_carts" for line in big.plan[1:])
    print(f"uses ix_shop_events_carts_due: {indexed}; full scan of the carts table: {full_scan}")
    print(f"\ntotal run time {elapsed:.0f} s")
    ok = all(n == DUE for case in cases for n in case.enqueued)
    if not ok:
        print(f"ERROR: a scan did not enqueue exactly {DUE:,} events")
    if not indexed or full_scan:
        print("ERROR: the due-cart query is not driven by ix_shop_events_carts_due")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Delivery at the account's limit: real workers against a receiver that enforces 350/s itself.

Sections (``--sections``, all by default):

``throughput``
    With default settings (only ``api.base_url`` and ``database.url`` set), ``shop-events
    worker`` processes drain a backlog (20,000 events; ``--quick`` 5,000) while the lean
    receiver answers after 0, 100 and 300 ms and enforces 350/s as the platform does (a token
    bucket of 350/s holding 35, 429 with ``Retry-After: 1`` when empty): one worker on SQLite,
    one, four and eight on PostgreSQL. Printed: events/s (steady: between the receiver's first
    and last acceptance) and its share of 350/s, the most requests the receiver saw in any one
    second (429s included), 429s, each worker's peak RSS, exactly once.
``outage``
    In-process, on SQLite and PostgreSQL: one hour of refused connections (the plugin's clock
    is moved in 10 s steps, a dispatch pass each, events queued all along), then the receiver
    comes back on the same port and the scheduler runs in real time: lost, dead, seconds from
    the API's return to the first delivery, drain rate, 429s.
``statements``
    In-process: the database statements one drain makes, per event delivered, split into the
    rate limiter's (``shop_events_rate_schedule``) and the rest.

Run: ``python tests/benchmarks/bench_account_limit.py`` (``--quick``, ``--sections``,
``--no-postgres``).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_delivery import (
    LeanReceiver,
    _toml,
    event_body,
    fill,
    machine,
    postgres_server,
    run_workers,
)
from shop_events import Settings, Tracker
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.outbox import NewEvent, enqueue
from shop_events.storage.tables import outbox
from sqlalchemy import Engine, event, func, select

from tests import postgres  # bench_delivery put the repository on the path
from tests.support import status_counts

LIMIT = 350.0
LATENCIES = (0.0, 0.1, 0.3)
LAYOUTS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 4), ("postgresql", 8))
GOALS = {0.0: 0.95, 0.1: 0.95, 0.3: 0.90}


def write_defaults(path: Path, base_url: str, database_url: str) -> Path:
    """A configuration with the defaults but for where the API and the database are."""
    path.write_text(
        f"[api]\nbase_url = {_toml(base_url)}\n\n[database]\nurl = {_toml(database_url)}\n",
        encoding="utf-8",
    )
    return path


@contextmanager
def database(kind: str, directory: Path, server: str | None) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'shop_events.db'}"
    else:
        assert server is not None
        yield postgres.new_database(server)


def migrated(database_url: str) -> Tracker:
    tracker = Tracker(
        Settings.load(
            {
                "api": {"base_url": "http://127.0.0.1:9/api"},
                "database": {"url": database_url},
                "scheduler": {"enabled": False},
            }
        )
    )
    tracker.migrate()
    return tracker


@dataclasses.dataclass
class Row:
    section: str
    setting: str
    figures: dict[str, Any]

    def show(self) -> None:
        text = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        print(f"  [{self.section}] {self.setting}: {text}", flush=True)


def one_throughput_run(
    kind: str, workers: int, latency: float, count: int, server: str | None
) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-limit-") as tmp:
        directory = Path(tmp)
        with database(kind, directory, server) as url:
            tracker = migrated(url)
            fill(tracker.engine, count)
            tracker.engine.dispose()
            receiver = LeanReceiver(latency, count, rate=LIMIT)
            try:
                config = write_defaults(directory / "shop.toml", receiver.base_url, url)
                run = run_workers(config, workers, count, lambda: receiver.arrived, 900, directory)
                stats = receiver.stats()
            finally:
                receiver.stop()
    steady = (stats["arrived"] - 1) / max(stats["last"] - stats["first"], 1e-9)
    return Row(
        "throughput",
        f"{kind}, {workers} worker(s), latency {latency * 1000:g} ms, {count:,} events",
        {
            "events/s": f"{steady:.0f}",
            "of the limit": f"{steady / LIMIT:.1%} (goal ≥ {GOALS.get(latency, 0.9):.0%})",
            "most in 1 s": stats["most_in_1s"],
            "429s": stats["refused"],
            "peak RSS MB": "/".join(f"{p:.0f}" for p in run.max_rss_mb),
            "missing": stats["missing"],
            "twice": stats["twice"],
            "exit": run.exit_codes,
        },
    )


def section_throughput(
    count: int,
    server: str | None,
    latencies: Sequence[float] = LATENCIES,
    layouts: Sequence[tuple[str, int]] = LAYOUTS,
) -> list[Row]:
    rows = []
    for latency in latencies:
        for kind, workers in layouts:
            if kind == "postgresql" and server is None:
                continue
            row = one_throughput_run(kind, workers, latency, count, server)
            row.show()
            rows.append(row)
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MovedClock:
    """The plugin's clock: real time plus an offset the benchmark moves."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def one_outage(kind: str, count: int, server: str | None) -> Row:
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp,
        database(kind, Path(tmp), server) as url,
    ):
        migrated(url).engine.dispose()
        clock = MovedClock()
        settings = Settings.load(
            {
                "api": {"base_url": f"http://127.0.0.1:{port}/api"},
                "database": {"url": url},
                "scheduler": {"dispatch_interval": "1s"},
            }
        )
        tracker = Tracker(settings, clock=clock)
        steps = 360  # one hour in 10 s steps
        per_step = -(-count // steps)
        queued = 0
        for _ in range(steps):
            batch = [
                NewEvent(
                    dedupe_key=f"outage:{i}",
                    event_type_key="bench_event",
                    key_value=f"shopper-{i}@example.com",
                    api_path="v1/event",
                    body=event_body(i),
                )
                for i in range(queued, min(count, queued + per_step))
            ]
            if batch:
                with tracker.engine.begin() as conn:
                    enqueue(conn, batch, clock())
                queued += len(batch)
            tracker.dispatch()
            clock.offset += timedelta(seconds=10)
        during = status_counts(tracker.engine)
        receiver = LeanReceiver(0.1, count, rate=LIMIT, port=port)
        back = time.monotonic()
        tracker.start()
        try:
            pause = threading.Event()
            first = None
            deadline = back + 600
            while time.monotonic() < deadline:
                stats = receiver.stats("count")
                if first is None and stats["arrived"]:
                    first = stats["first"]
                if stats["arrived"] - stats["other"] >= count:
                    break
                pause.wait(0.2)
        finally:
            tracker.shutdown()
            stats = receiver.stats()
            receiver.stop()
        counts = status_counts(tracker.engine)
        with tracker.engine.begin() as conn:
            attempts = conn.execute(select(func.sum(outbox.c.attempts))).scalar_one()
        tracker.engine.dispose()
    steady = (stats["arrived"] - 1) / max(stats["last"] - stats["first"], 1e-9)
    # the receiver's clock is its own process's monotonic one, the same CLOCK_MONOTONIC
    return Row(
        "outage",
        f"{kind}, one worker (in-process), {count:,} events queued over one hour of refused "
        f"connections, then latency 100 ms",
        {
            "statuses during the outage": dict(during),
            "first delivery after the API returned (s)": f"{(first or back) - back:.1f}",
            "drain events/s": f"{steady:.0f} ({steady / LIMIT:.1%} of the limit)",
            "429s": stats["refused"],
            "lost": stats["missing"],
            "twice": stats["twice"],
            "dead": counts.get(OutboxStatus.DEAD.value, 0),
            "attempts spent": attempts,
        },
    )


def section_outage(quick: bool, server: str | None) -> list[Row]:
    count = 5000 if quick else 20000
    rows = []
    for kind in ("sqlite", "postgresql"):
        if kind == "postgresql" and server is None:
            continue
        rows.append(one_outage(kind, count, server))
        rows[-1].show()
    return rows


def count_statements(engine: Engine) -> dict[str, int]:
    counts = {"rate limiter": 0, "other": 0}

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["rate limiter" if "shop_events_rate_schedule" in statement else "other"] += 1

    event.listen(engine, "before_cursor_execute", seen)
    return counts


def one_statements(kind: str, count: int, server: str | None) -> Row:
    with (
        tempfile.TemporaryDirectory(prefix="bench-stmts-") as tmp,
        database(kind, Path(tmp), server) as url,
    ):
        migrated(url).engine.dispose()
        receiver = LeanReceiver(0.0, count, rate=LIMIT)
        try:
            tracker = Tracker(
                Settings.load(
                    {
                        "api": {"base_url": receiver.base_url},
                        "database": {"url": url},
                        "scheduler": {"enabled": False},
                    }
                )
            )
            fill(tracker.engine, count)
            counts = count_statements(tracker.engine)
            deadline = time.monotonic() + 300
            while receiver.arrived < count and time.monotonic() < deadline:
                tracker.dispatch()
            tracker.shutdown()
            tracker.engine.dispose()
            stats = receiver.stats()
        finally:
            receiver.stop()
    sent = stats["arrived"]
    return Row(
        "statements",
        f"{kind}, one drain of {count:,} events",
        {
            "rate limiter statements": counts["rate limiter"],
            "per event": f"{counts['rate limiter'] / max(sent, 1):.3f}",
            "all statements per event": f"{sum(counts.values()) / max(sent, 1):.2f}",
            "429s": stats["refused"],
        },
    )


def section_statements(quick: bool, server: str | None) -> list[Row]:
    count = 2000 if quick else 10000
    rows = []
    for kind in ("sqlite", "postgresql"):
        if kind == "postgresql" and server is None:
            continue
        rows.append(one_statements(kind, count, server))
        rows[-1].show()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    choices = ["throughput", "outage", "statements"]
    parser.add_argument("--sections", nargs="+", choices=choices, default=choices)
    parser.add_argument("--quick", action="store_true", help="smaller backlogs")
    parser.add_argument("--events", type=int, help="the throughput backlog (default 20,000)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--latencies", nargs="+", type=float, help="seconds (throughput)")
    parser.add_argument(
        "--layouts", nargs="+", help="throughput runs as kind:workers, e.g. sqlite:1 postgresql:4"
    )
    args = parser.parse_args(argv)
    latencies = tuple(args.latencies or LATENCIES)
    layouts = LAYOUTS
    if args.layouts:
        layouts = tuple((k, int(n)) for k, n in (x.split(":") for x in args.layouts))
    print(machine(), flush=True)
    rows: list[Row] = []
    with postgres_server(not args.no_postgres) as server:
        if "throughput" in args.sections:
            count = args.events or (5000 if args.quick else 20000)
            rows += section_throughput(count, server, latencies, layouts)
        if "outage" in args.sections:
            rows += section_outage(args.quick, server)
        if "statements" in args.sections:
            rows += section_statements(args.quick, server)
    print()
    for row in rows:
        row.show()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Delivery throughput and memory: real ``shop-events worker`` processes against a local receiver.

Sections (``--sections``, all by default):

``ceiling``
    What the receivers themselves can answer, measured with a raw-socket load generator in its
    own process (keep-alive connections, one pre-built valid request): the demo
    :class:`~shop_events.testing.Receiver` (Flask on werkzeug's threaded server, in this
    process) with no latency and with 50 ms, and the lean receiver used for the big runs.
``latency``
    One worker, receiver latency 50 ms: events/s for several ``delivery.threads`` /
    ``delivery.batch_size`` settings (goal ≥ 330/s, 95 % of the API's 350/s).
``nolatency``
    One worker, no latency: events/s (goal ≥ 1,000/s), against the demo Receiver and the lean one.
``workers``
    Four workers on one PostgreSQL database: events/s and the exactly-once count.
``memory``
    Peak RSS of one worker draining a large backlog (``--backlogs``, default 200,000 and
    1,000,000 rows) on SQLite and PostgreSQL: the worker's own peak (``VmHWM`` from
    ``/proc/<pid>/status``; ``ru_maxrss`` would count this script's pages too, see
    :func:`memory_mb`) and its RSS sampled while it drains (goal < 150 MB, flat in the
    backlog's size).

Every run: a fresh temporary directory (and a fresh database on a throwaway PostgreSQL cluster,
started by the script as the tests do), the backlog inserted with ``outbox.enqueue`` in
bulk, then ``shop-events --config … worker`` processes (scheduler on, dispatch every second,
``api.rate_limit`` raised out of the way) started and timed. The rate is the steady one: events
delivered between the receiver's first arrival and its last answer. Exactly once: every event
carries an ``event_id`` param; the receiver counts each id.

The lean receiver (an asyncio HTTP/1.1 responder in its own process, a few dozen lines below)
answers 200 after the set latency and only counts ids: the demo Receiver keeps every request in
memory and runs Flask per request, which is right for tests and wrong for a million events.

Run: ``python tests/benchmarks/bench_delivery.py`` (``--help`` for the knobs; ``--quick`` for a
short pass over every section).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import gc
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.postgres: the throwaway cluster of the test suite

from shop_events import Settings, Tracker  # noqa: E402
from shop_events.storage.outbox import NewEvent, enqueue  # noqa: E402
from shop_events.testing import Receiver  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

EVENT_TYPE = "bench_event"
ITEMS = json.dumps(
    {
        "array": [
            {
                "name": f"Product {k} with a realistic, moderately long name",
                "price": f"{12 + k}.50",
                "url": f"https://shop.example/p/{k}",
                "imageurl": f"https://shop.example/i/{k}.jpg",
                "brand": "Le Petit Olivier",
            }
            for k in range(3)
        ]
    },
    separators=(",", ":"),
)
ID_MARK = b'{"name":"event_id","value":"e-'
POLL = 0.2
GOAL_LATENCY = 330.0
GOAL_NO_LATENCY = 1000.0
GOAL_RSS_MB = 150.0


def event_body(i: int) -> str:
    """An event of about 700 bytes: email, event_id and a three-product ``items`` string."""
    email = f"shopper-{i}@example.com"
    params = [
        {"name": "email", "value": email},
        {"name": "event_id", "value": f"e-{i}"},
        {"name": "items", "value": ITEMS},
    ]
    return json.dumps(
        {"eventTypeKey": EVENT_TYPE, "keyValue": email, "params": params}, separators=(",", ":")
    )


def fill(engine: Engine, count: int, chunk: int = 5000) -> float:
    """Queue ``count`` due events in bulk; returns the seconds it took."""
    start = time.perf_counter()
    now = datetime.now(UTC)
    for first in range(0, count, chunk):
        events = [
            NewEvent(
                dedupe_key=f"{EVENT_TYPE}:{i}",
                event_type_key=EVENT_TYPE,
                key_value=f"shopper-{i}@example.com",
                api_path="v1/event",
                body=event_body(i),
            )
            for i in range(first, min(count, first + chunk))
        ]
        with engine.begin() as conn:
            enqueue(conn, events, now)
    return time.perf_counter() - start


# ------------------------------------------------------------------------- lean receiver


def _event_ids(body: bytes, marks: Sequence[bytes] = (ID_MARK,)) -> Iterator[int]:
    """Every id in a body: one per event, many in a batch (an id follows one of ``marks``)."""
    for mark in marks:
        start = body.find(mark)
        while start >= 0:
            start += len(mark)
            end = body.index(b'"', start)
            yield int(body[start:end])
            start = body.find(mark, end)


def most_in_one_second(times: Sequence[float]) -> int:
    """The largest number of ``times`` (seconds, sorted) inside any one-second window."""
    most = 0
    first = 0
    for last, at in enumerate(times):
        while times[first] <= at - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def _lean_main(
    latency: float,
    size: int,
    pipe: Pipe,
    rate: float | None = None,
    burst: float = 0.1,
    port: int = 0,
    marks: Sequence[bytes] = (ID_MARK,),
) -> None:
    """The lean receiver's process: serve, and answer ``stats`` requests on ``pipe``.

    Each id found after one of ``marks`` counts once (``ids``: all of them, batches included).

    With ``rate``, it enforces it as the platform does: a token bucket of ``rate`` per second
    holding ``rate × burst`` tokens; a request finding it empty is answered 429 with
    ``Retry-After: 1`` at once (and is not counted as delivered).
    """
    # What the spawned process imported (this module, the plugin, SQLAlchemy) stays out of the
    # collector's way: a full collection over it stopped the loop for ~80 ms, and the requests
    # that came in meanwhile were stamped as one burst (sent evenly, counted 372-382 a second).
    gc.freeze()
    seen = bytearray(size)
    state: dict[str, Any] = {
        "arrived": 0,
        "first": 0.0,
        "last": 0.0,
        "other": 0,
        "refused": 0,
        "ids": 0,
    }
    times = array("d")
    bucket = {"tokens": max(1.0, (rate or 0) * burst), "at": time.monotonic()}
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    busy = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 0\r\n\r\n"
    )

    def within_rate(now: float) -> bool:
        if not rate:
            return True
        capacity = max(1.0, rate * burst)
        bucket["tokens"] = min(capacity, bucket["tokens"] + (now - bucket["at"]) * rate)
        bucket["at"] = now
        if bucket["tokens"] < 1.0:
            return False
        bucket["tokens"] -= 1.0
        return True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                now = time.monotonic()
                times.append(now)
                if not within_rate(now):
                    state["refused"] += 1
                    writer.write(busy)
                    continue
                if not state["arrived"]:
                    state["first"] = now
                state["arrived"] += 1
                if latency:
                    await asyncio.sleep(latency)
                found = 0
                for number in _event_ids(body, marks):
                    if number < size:
                        seen[number] = min(255, seen[number] + 1)
                        found += 1
                state["ids"] += found
                if not found:
                    state["other"] += 1
                state["last"] = time.monotonic()
                writer.write(ok)
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        pipe.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "stop":
                return
            if command == "count":  # polled while the run goes: nothing that holds the loop
                pipe.send(dict(state))
                continue
            pipe.send(
                {
                    **state,
                    "missing": seen.count(0),
                    "twice": sum(n - 1 for n in seen if n > 1),
                    "most_in_1s": most_in_one_second(times) if times else 0,
                }
            )

    asyncio.run(serve())


class LeanReceiver:
    """An asyncio HTTP/1.1 responder in its own process: 200 after ``latency``, counts the ids
    after ``marks`` (every one of a batch); with ``rate``, 429 above it (see
    :func:`_lean_main`)."""

    def __init__(
        self,
        latency: float = 0.0,
        size: int = 0,
        rate: float | None = None,
        port: int = 0,
        marks: Sequence[bytes] = (ID_MARK,),
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_lean_main,
            args=(latency, size, child, rate, 0.1, port, tuple(marks)),
            daemon=True,
            name="lean-receiver",
        )
        self._process.start()
        if not self._pipe.poll(30):
            raise RuntimeError("the lean receiver did not start")
        self.port: int = self._pipe.recv()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def stats(self, command: str = "stats") -> dict[str, Any]:
        """Every figure (``"stats"``: reads all the arrivals, for the end of a run) or the
        counters only (``"count"``: cheap, for polling)."""
        with self._lock:
            self._pipe.send(command)
            stats: dict[str, Any] = self._pipe.recv()
            return stats

    @property
    def arrived(self) -> int:
        return int(self.stats("count")["arrived"])

    def stop(self) -> None:
        with suppress(OSError):
            self._pipe.send("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


# ------------------------------------------------------------------------- load generator


def _hammer(port: int, request: bytes, connections: int, seconds: float, out: Pipe) -> None:
    """Keep-alive connections sending ``request`` back to back; sends (answered, non-2xx)."""
    answered = [0] * connections
    errors = [0] * connections
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        sock: socket.socket | None = None
        buffer = b""
        try:
            while time.monotonic() < stop:
                if sock is None:  # werkzeug's server closes after every answer
                    sock = socket.create_connection(("127.0.0.1", port))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buffer = b""
                sock.sendall(request)
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed before the answer")
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                buffer = buffer[length:]
                answered[k] += 1
                if not head.startswith(b"HTTP/1.1 2"):
                    errors[k] += 1
                if b"connection: close" in head.lower():
                    sock.close()
                    sock = None
        except OSError:
            errors[k] += 1
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    out.send((sum(answered), sum(errors)))


def ceiling(port: int, connections: int, seconds: float, key: str | None = None) -> float:
    """Requests per second a receiver answers to a raw-socket generator in its own process."""
    body = event_body(0).encode()
    headers = [
        "POST /api/v1/event HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json; charset=UTF-8",
        f"Content-Length: {len(body)}",
    ]
    if key is not None:
        headers.append("Authorization: Basic " + base64.b64encode(f"u:{key}".encode()).decode())
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_hammer, args=(port, request, connections, seconds, send))
    start = time.perf_counter()
    process.start()
    answered, errors = receive.recv() if receive.poll(seconds + 60) else (0, 0)
    elapsed = time.perf_counter() - start
    process.join(10)
    if errors:
        print(f"    ({errors} non-2xx answers)")
    return answered / min(elapsed, seconds + 1)


# ------------------------------------------------------------------------------ workers


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, base_url: str, database_url: str, threads: int, batch: int) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "api": {"base_url": base_url, "rate_limit": 100_000.0},
        "database": {"url": database_url},
        "scheduler": {"enabled": True, "scan_interval": "1h", "dispatch_interval": "1s"},
        "delivery": {"threads": threads, "batch_size": batch},
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def worker_command(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("shop-events")
    if script.exists():
        return [str(script), "--config", str(config), "worker"]
    entry = "from shop_events.cli import main; main()"
    return [sys.executable, "-c", entry, "--config", str(config), "worker"]


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(resident set now, its peak so far) of a process, from ``/proc/<pid>/status``.

    The peak is ``VmHWM``, the high-water mark of the process's own address space since its
    ``exec``. ``ru_maxrss`` (``getrusage``/``wait4``) is not used: on Linux it also counts the
    pages of the parent the child was forked from before it ran ``exec``, so it reports this
    script's size, not the worker's.
    """
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    except (OSError, ValueError):
        return None
    if len(values) < 2:
        return None  # gone, or a zombie
    return values["VmRSS"], values["VmHWM"]


@dataclasses.dataclass
class WorkerRun:
    """What one run of worker processes did."""

    seconds: float
    """From the workers' start to the last expected event arriving (imports included)."""
    delivered: int
    exit_codes: list[int]
    max_rss_mb: list[float]
    """The peak resident set of each worker (``VmHWM``, see :func:`memory_mb`)."""
    rss_samples: list[list[tuple[float, float]]]
    """Each worker's (seconds since start, RSS MB), sampled while it ran."""


def run_workers(
    config: Path,
    count: int,
    expected: int,
    delivered: Callable[[], int],
    timeout: float,
    directory: Path,
) -> WorkerRun:
    """Start ``count`` workers, wait until ``expected`` events arrived, SIGTERM, reap."""
    processes = []
    for k in range(count):
        with (directory / f"worker-{k}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    worker_command(config), cwd=directory, stdout=log, stderr=subprocess.STDOUT
                )
            )
    start = time.perf_counter()
    samples: list[list[tuple[float, float]]] = [[] for _ in processes]
    peaks = [0.0 for _ in processes]
    pause = threading.Event()
    done = 0

    def sample() -> None:
        for k, process in enumerate(processes):
            measured = memory_mb(process.pid)
            if measured is not None:
                samples[k].append((time.perf_counter() - start, measured[0]))
                peaks[k] = max(peaks[k], measured[1])

    try:
        while time.perf_counter() - start < timeout:
            sample()
            done = delivered()
            if done >= expected or any(p.poll() is not None for p in processes):
                break
            pause.wait(POLL if len(samples[0]) < 50 else 1.0)
        seconds = time.perf_counter() - start
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
    deadline = time.perf_counter() + 60
    while any(p.poll() is None for p in processes) and time.perf_counter() < deadline:
        sample()  # shutdown counts too
        pause.wait(0.05)
    codes = []
    for process in processes:
        if process.poll() is None:
            process.kill()
        codes.append(process.wait(30))
    return WorkerRun(seconds, done, codes, peaks, samples)


@contextmanager
def postgres_server(wanted: bool) -> Iterator[str | None]:
    """The test suite's throwaway cluster, or None when not wanted or not installed."""
    if not wanted:
        yield None
        return
    from tests import postgres

    reason = postgres.unavailable_reason()
    if reason:
        print(f"PostgreSQL skipped: {reason}")
        yield None
        return
    with postgres.cluster() as url:
        yield url


def new_database(kind: str, directory: Path, server: str | None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{directory / 'shop_events.db'}"
    from tests import postgres

    assert server is not None
    return postgres.new_database(server)


def prepare(database_url: str, count: int, directory: Path) -> float:
    """Migrate a fresh database and queue ``count`` events; returns the fill's seconds."""
    config = write_config(directory / "fill.toml", "http://127.0.0.1:9/api", database_url, 1, 1)
    tracker = Tracker(Settings.from_file(config, env={}))
    tracker.migrate()
    seconds = fill(tracker.engine, count)
    tracker.engine.dispose()
    return seconds


# ------------------------------------------------------------------------------ sections


@dataclasses.dataclass
class Figure:
    """One line of the results."""

    section: str
    setting: str
    events: int
    per_second: float
    exactly_once: str = ""
    rss_mb: str = ""
    note: str = ""


def describe(kind: str, workers: int, threads: int, batch: int, latency: float) -> str:
    return (
        f"{kind}, {workers} worker(s), threads {threads}, batch {batch}, "
        f"latency {latency * 1000:g} ms"
    )


def demo_receiver_rate(receiver: Receiver) -> float:
    requests = receiver.requests
    first = min(r.arrived or r.time for r in requests)
    last = max(r.time for r in requests)
    return (len(requests) - 1) / max((last - first).total_seconds(), 1e-9)


def demo_receiver_counts(receiver: Receiver, expected: int) -> tuple[int, int]:
    """(missing, delivered twice) by ``event_id``."""
    counts = Counter(Receiver.params(body).get("event_id") for body in receiver.events)
    missing = sum(1 for i in range(expected) if counts[f"e-{i}"] == 0)
    twice = sum(n - 1 for n in counts.values() if n > 1)
    return missing, twice


def one_run_demo_receiver(
    section: str,
    kind: str,
    server: str | None,
    count: int,
    workers: int,
    threads: int,
    batch: int,
    latency: float,
) -> Figure:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        directory = Path(tmp)
        database_url = new_database(kind, directory, server)
        prepare(database_url, count, directory)
        with Receiver() as receiver:
            receiver.latency = latency
            config = write_config(
                directory / "shop.toml", receiver.base_url, database_url, threads, batch
            )
            run = run_workers(config, workers, count, lambda: receiver.arrived, 600, directory)
            rate = demo_receiver_rate(receiver)
            missing, twice = demo_receiver_counts(receiver, count)
    setting = describe(kind, workers, threads, batch, latency)
    return Figure(
        section,
        setting + ", demo Receiver",
        count,
        rate,
        exactly_once=f"missing {missing}, twice {twice}",
        rss_mb="/".join(f"{p:.0f}" for p in run.max_rss_mb),
        note=f"exit {run.exit_codes}, {run.seconds:.1f} s from start",
    )


def one_run_lean(
    section: str,
    kind: str,
    server: str | None,
    count: int,
    workers: int,
    threads: int,
    batch: int,
    latency: float,
    timeout: float = 7200,
) -> tuple[Figure, WorkerRun]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        directory = Path(tmp)
        database_url = new_database(kind, directory, server)
        fill_seconds = prepare(database_url, count, directory)
        receiver = LeanReceiver(latency, count)
        try:
            config = write_config(
                directory / "shop.toml", receiver.base_url, database_url, threads, batch
            )
            run = run_workers(config, workers, count, lambda: receiver.arrived, timeout, directory)
            stats = receiver.stats()
        finally:
            receiver.stop()
    steady = (stats["arrived"] - 1) / max(stats["last"] - stats["first"], 1e-9)
    setting = describe(kind, workers, threads, batch, latency)
    figure = Figure(
        section,
        setting + ", lean receiver",
        count,
        steady,
        exactly_once=f"missing {stats['missing']}, twice {stats['twice']}",
        rss_mb="/".join(f"{p:.0f}" for p in run.max_rss_mb),
        note=f"exit {run.exit_codes}, {run.seconds:.1f} s from start, fill {fill_seconds:.0f} s",
    )
    return figure, run


def section_ceiling(quick: bool) -> list[Figure]:
    seconds = 3.0 if quick else 6.0
    figures = []
    for latency, connections in ((0.0, 8), (0.0, 32), (0.05, 32), (0.05, 64)):
        with Receiver(api_key="bench-key") as receiver:
            receiver.latency = latency
            rate = ceiling(receiver.port, connections, seconds, key="bench-key")
        figures.append(
            Figure(
                "ceiling",
                f"demo Receiver (werkzeug threaded), latency {latency * 1000:g} ms, "
                f"{connections} connections",
                int(rate * seconds),
                rate,
            )
        )
    for latency, connections in ((0.0, 8), (0.05, 64)):
        lean = LeanReceiver(latency, 0)
        try:
            rate = ceiling(lean.port, connections, seconds)
        finally:
            lean.stop()
        figures.append(
            Figure(
                "ceiling",
                f"lean receiver (asyncio), latency {latency * 1000:g} ms, "
                f"{connections} connections",
                int(rate * seconds),
                rate,
            )
        )
    return figures


def section_latency(quick: bool) -> list[Figure]:
    grid = [(4, 100), (16, 200), (32, 200), (64, 400)] if not quick else [(4, 100), (32, 200)]
    figures = []
    for threads, batch in grid:
        count = max(1000, min(6000, threads * 120)) if not quick else 1500
        figures.append(
            one_run_demo_receiver("latency", "sqlite", None, count, 1, threads, batch, 0.05)
        )
        print_figure(figures[-1])
    return figures


def section_no_latency(quick: bool, server: str | None) -> list[Figure]:
    count = 2000 if quick else 8000
    figures = []
    for threads in (4, 8, 32) if not quick else (8,):
        figures.append(
            one_run_demo_receiver("nolatency", "sqlite", None, count, 1, threads, 200, 0.0)
        )
        print_figure(figures[-1])
    kinds = ["sqlite"] + (["postgresql"] if server else [])
    for kind in kinds:
        figure, _ = one_run_lean("nolatency", kind, server, count, 1, 8, 200, 0.0)
        figures.append(figure)
        print_figure(figure)
    return figures


def section_workers(quick: bool, server: str | None) -> list[Figure]:
    if server is None:
        return []
    count = 4000 if quick else 20000
    figures = [
        one_run_demo_receiver("workers", "postgresql", server, count, 4, 8, 200, 0.0),
    ]
    print_figure(figures[-1])
    figure, _ = one_run_lean("workers", "postgresql", server, count, 4, 8, 200, 0.0)
    figures.append(figure)
    print_figure(figure)
    return figures


def section_memory(
    backlogs: Sequence[int], server: str | None, engines: Sequence[str]
) -> list[Figure]:
    figures = []
    kinds = [k for k in engines if k == "sqlite" or (k == "postgresql" and server)]
    for kind in kinds:
        for backlog in backlogs:
            figure, run = one_run_lean("memory", kind, server, backlog, 1, 8, 200, 0.0)
            samples = [(at, rss) for at, rss in run.rss_samples[0] if at >= 2.0]  # after exec
            if samples:
                third = len(samples) // 3
                marks = [samples[0], samples[third], samples[2 * third], samples[-1]]
                figure.note += "; RSS over the drain " + " → ".join(
                    f"{rss:.0f} MB @{at:.0f}s" for at, rss in marks
                )
            figures.append(figure)
            print_figure(figure)
    return figures


def print_figure(figure: Figure) -> None:
    extra = "".join(
        f", {name} {value}"
        for name, value in (
            ("exactly once:", figure.exactly_once),
            ("peak RSS MB", figure.rss_mb),
        )
        if value
    )
    print(
        f"  [{figure.section}] {figure.setting}: {figure.events} events, "
        f"{figure.per_second:,.0f}/s{extra} ({figure.note})",
        flush=True,
    )


def machine() -> str:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load[0]:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    choices = ["ceiling", "latency", "nolatency", "workers", "memory"]
    parser.add_argument("--sections", nargs="+", choices=choices, default=choices)
    parser.add_argument(
        "--backlogs",
        nargs="+",
        type=int,
        default=[200_000, 1_000_000],
        help="backlog sizes of the memory section",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=["sqlite", "postgresql"],
        help="databases of the memory section",
    )
    parser.add_argument("--quick", action="store_true", help="small runs of every section")
    args = parser.parse_args(argv)
    backlogs = [20_000] if args.quick else args.backlogs
    print(machine(), flush=True)
    figures: list[Figure] = []
    needs_pg = not args.no_postgres and bool(
        {"nolatency", "workers", "memory"} & set(args.sections)
    )
    with postgres_server(needs_pg) as server:
        if "ceiling" in args.sections:
            for figure in section_ceiling(args.quick):
                print_figure(figure)
                figures.append(figure)
        if "latency" in args.sections:
            figures += section_latency(args.quick)
        if "nolatency" in args.sections:
            figures += section_no_latency(args.quick, server)
        if "workers" in args.sections:
            figures += section_workers(args.quick, server)
        if "memory" in args.sections:
            figures += section_memory(backlogs, server, args.engines)
    print("\nsection | setting | events | events/s | exactly once | peak RSS MB | note")
    for f in figures:
        print(
            f"{f.section} | {f.setting} | {f.events:,} | {f.per_second:,.0f} | "
            f"{f.exactly_once} | {f.rss_mb} | {f.note}"
        )
    print(
        f"\ngoals: ≥ {GOAL_LATENCY:.0f}/s at 50 ms, ≥ {GOAL_NO_LATENCY:.0f}/s without "
        f"latency, peak RSS < {GOAL_RSS_MB:.0f} MB flat in the backlog's size"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the tests share besides fixtures: the test API key, paths, and the fault tests' tools.

Fixtures live in the ``conftest.py`` files; everything a test imports by name lives here, so a
test module reads ``from tests.support import ...`` and nothing imports a ``conftest``.
The fault-test tools (worker processes, config files, bounded waits, the figures) bound every
wait; the ``workers`` fixture kills any process a test left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from shop_events import Item, Settings, Tracker
from shop_events.storage.tables import outbox
from shop_events.testing import Receiver
from sqlalchemy import Engine, Row, select

REPO = Path(__file__).resolve().parent.parent
"""The repository root (README, ``config.example.toml``, ``pyproject.toml``)."""
DATA = Path(__file__).resolve().parent / "data"
"""Files the tests compare against (the seed's Generate event body)."""

API_KEY = "test-key-5f2b"
"""The key the test receiver expects and the test settings send."""

SettingsFactory = Callable[..., Settings]
"""``make_settings(**sections)``: test settings with some sections overridden."""


def migrate_database(url: str) -> None:
    """Bring the plugin's tables in the database at ``url`` to the newest revision, as
    ``Tracker.migrate()`` does, and leave no connection open."""
    tracker = Tracker(Settings.load({"database": {"url": url}, "scheduler": {"enabled": False}}))
    try:
        tracker.migrate()
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


class VirtualTime:
    """A monotonic clock that moves only when a caller waits on it, for the rate limiters.

    Patched in as a module's monotonic clock and passed where the code waits on a stop event:
    ``wait(seconds)`` records the wait, moves the clock by it (unless ``frozen``) and reports
    "not stopped", or "stopped" without moving once :attr:`stopped` is set. ``on_wait`` runs
    inside the next wait, as something happening while the caller waits.
    """

    def __init__(self, start: float = 1000.0, *, frozen: bool = False) -> None:
        self.now = start
        self.frozen = frozen
        self.stopped = False
        self.waits: list[float] = []
        self.on_wait: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        with self._lock:
            self.now += seconds

    def wait(self, seconds: float | None = None) -> bool:
        """What ``threading.Event.wait`` does, in virtual time."""
        with self._lock:
            self.waits.append(0.0 if seconds is None else seconds)
            hook, self.on_wait = self.on_wait, None
        if hook is not None:
            hook()
        if self.stopped:
            return True
        if not self.frozen and seconds:
            self.advance(seconds)
        return False

    def is_set(self) -> bool:
        return self.stopped


# ------------------------------------------------------------------------------ fault tests

POLL = 0.05
"""Seconds between two looks at a condition."""
STOP_TIMEOUT = 20.0
"""How long a worker gets to exit after SIGTERM or SIGKILL."""


# ------------------------------------------------------------------------------ waiting


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every :data:`POLL` seconds until it holds; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(POLL)


# ------------------------------------------------------------------------------ config


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """A TOML settings file of ``{section: {key: value}}``."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def base_sections(receiver: Receiver, database_url: str, key: str | None = None) -> dict[str, Any]:
    """Settings of a worker against ``receiver`` on ``database_url``; callers add to them."""
    return {
        "api": {"base_url": receiver.base_url, "key": receiver.api_key if key is None else key},
        "database": {"url": database_url},
        "scheduler": {"enabled": True, "scan_interval": "1s", "dispatch_interval": "1s"},
        "delivery": {},
        "abandoned_cart": {"contact_interval": "0s"},
    }


# ------------------------------------------------------------------------------ workers


def worker_command(config: Path) -> list[str]:
    """The installed ``shop-events`` console script, or the same entry point through Python."""
    script = Path(sys.executable).with_name("shop-events")
    if script.exists():
        return [str(script), "--config", str(config), "worker"]
    return [
        sys.executable,
        "-c",
        "from shop_events.cli import main; main()",
        "--config",
        str(config),
        "worker",
    ]


@dataclasses.dataclass
class Worker:
    """A ``shop-events worker`` process with its output in a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM; returns (exit code or None if still running after ``timeout``, seconds)."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - start

    def kill(self) -> None:
        """SIGKILL (``kill -9``) and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)


class Workers:
    """Starts worker processes; :meth:`close` kills whatever is still running."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._started: list[Worker] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_EVENTS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self._env = env

    def start(self, config: Path, name: str = "worker") -> Worker:
        log_path = self._directory / f"{name}-{len(self._started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                worker_command(config),
                cwd=self._directory,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(name, process, log_path)
        self._started.append(worker)
        return worker

    def outputs(self) -> str:
        return "\n".join(f"--- {w.name} ({w.pid}) ---\n{w.output()}" for w in self._started)

    def close(self) -> None:
        for worker in self._started:
            if worker.process.poll() is None:
                worker.process.kill()
        for worker in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):  # the kernel reaps it later
                worker.process.wait(timeout=STOP_TIMEOUT)


# ------------------------------------------------------------------------------ figures


def engine_name(database_url: str) -> str:
    """``sqlite`` or ``postgresql``, for the figures' titles."""
    return database_url.split(":", 1)[0].split("+", 1)[0]


def identity(body: Mapping[str, Any]) -> str:
    """What makes an event the same event in the tests: its type and its subject id."""
    params = Receiver.params(dict(body))
    subject = params.get("cart_id") or params.get("order_id") or params.get("event_id")
    return f"{body.get('eventTypeKey')}:{subject}"


def outbox_rows(engine: Engine) -> list[Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


def status_counts(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(r.status for r in conn.execute(select(outbox.c.status)))


@dataclasses.dataclass
class Figures:
    """What a fault test prints and asserts on."""

    created: int
    delivered: int
    lost: int
    delivered_twice: int
    attempts: int
    requests: int
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def show(self, title: str) -> None:
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        print(
            f"\n[{title}] events created {self.created}, delivered {self.delivered}, "
            f"lost {self.lost}, delivered twice {self.delivered_twice}, "
            f"attempts {self.attempts}, requests {self.requests}{extra}"
        )


def figures(rows: Sequence[Row[Any]], receiver: Receiver) -> Figures:
    """Compare the outbox with what the receiver accepted."""
    received = Counter(identity(body) for body in receiver.events)
    expected = {identity(json.loads(row.body)) for row in rows}
    return Figures(
        created=len(rows),
        delivered=sum(1 for key in expected if received[key] > 0),
        lost=sum(1 for key in expected if received[key] == 0),
        delivered_twice=sum(count - 1 for count in received.values() if count > 1),
        attempts=sum(row.attempts for row in rows),
        requests=len(receiver.requests),
    )


# ------------------------------------------------------------------------------ events

FAULT_EVENT = "fault_test"


def add_carts(tracker: Tracker, count: int, prefix: str = "cart") -> None:
    """``count`` carts with one product and a unique email each, in one host transaction."""
    with tracker.engine.begin() as conn:
        for i in range(count):
            tracker.cart_updated(
                f"{prefix}-{i}",
                email=f"{prefix}-{i}@example.com",
                items=[
                    Item(
                        name=f"Product {i}",
                        price=f"{10 + i % 90}",
                        url=f"https://shop.example/p/{i}",
                    )
                ],
                currency="EUR",
                connection=conn,
            )


def add_events(tracker: Tracker, count: int, prefix: str = "event") -> None:
    """``count`` immediate custom events, each with its own ``event_id``, in one transaction."""
    with tracker.engine.begin() as conn:
        for i in range(count):
            tracker.custom_event(
                FAULT_EVENT,
                key_value=f"{prefix}-{i}@example.com",
                params={"email": f"{prefix}-{i}@example.com", "event_id": f"{prefix}-{i}"},
                dedupe_key=f"{FAULT_EVENT}:{prefix}-{i}",
                connection=conn,
            )


# ------------------------------------------------------------------------------ trackers

TrackerFactory = Callable[..., Tracker]
"""``make_tracker(**sections)``: a migrated tracker on test settings with some sections
overridden."""


@contextlib.contextmanager
def trackers(
    make_settings: SettingsFactory, **defaults: dict[str, Any]
) -> Iterator[TrackerFactory]:
    """Makes migrated trackers on ``make_settings``, with the sections in ``defaults`` unless a
    call names its own; shuts them all down and closes their engines on exit."""
    made: list[Tracker] = []

    def make(**sections: dict[str, Any]) -> Tracker:
        tracker = Tracker(make_settings(**{**defaults, **sections}))
        tracker.migrate()
        made.append(tracker)
        return tracker

    try:
        yield make
    finally:
        for tracker in made:
            tracker.shutdown()
            tracker.engine.dispose()


def scan_and_dispatch(tracker: Tracker) -> int:
    """One scan and one dispatch pass; how many events went out."""
    tracker.scan()
    return tracker.dispatch().sent


# ------------------------------------------------------------------------------ recovery

RECOVERY_START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
"""Where the recovery tests' frozen ``clock`` starts (``tests/recovery/conftest.py``)."""
REPORT_KEYS = {
    "abandoned",
    "reminders_delivered",
    "clicks",
    "recovered_orders",
    "recovered_revenue",
    "recovery_rate",
    "daily",
    "flows",
}
"""The recovery report's keys as the issue names them (``recovery_report().as_json()``)."""


def link_token(event: dict[str, Any]) -> str:
    """The token of the recovery link (``cart_url``) in a reminder the receiver got."""
    url: str = Receiver.params(event)["cart_url"]
    path = urlsplit(url).path
    assert path.startswith("/shop-events/r/"), url
    return path.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------ privacy

PRIVACY_START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
"""Where the privacy tests' frozen ``clock`` starts (``tests/privacy/conftest.py``)."""
PRIVACY_SECTIONS: dict[str, dict[str, Any]] = {
    "orders": {"api": True},
    "recovery": {
        "links": True,
        "base_url": "https://shop.example",
        "secret": "a-test-secret-of-32-characters!!",
    },
}
"""Orders API rows and recovery links on: a person's data then takes every form it can."""


def held_everywhere(tracker: Tracker, receiver: Receiver, clock: Any, email: str, tag: str) -> None:
    """Captures of every kind for ``email`` (``tag`` keeps its carts, order and visitor apart
    from another person's), under :data:`PRIVACY_SECTIONS` and a frozen ``clock``: a visitor's
    view and cart before it is identified, a cart whose restore URL quotes the address, a view,
    a registration, an opt-out then an opt-in, a login, contact data, a marketing event naming
    it in other cases; a reminder delivered and clicked, the order it recovered (its events and
    Orders API row delivered), an event dead on a 400 quoting the address.
    """
    from shop_events.recovery.links import open_link
    from shop_events.testing import Reply

    lamp = Item(name="Lamp", price="30", url="https://shop.example/p/lamp")
    visitor = f"visitor-{tag}"
    tracker.product_viewed(visitor_id=visitor, item=lamp)
    tracker.cart_updated(f"anonymous-{tag}", visitor_id=visitor, items=[lamp], currency="EUR")
    tracker.identify(visitor_id=visitor, email=email)
    restore = f"https://shop.example/cart?for={quote(email, safe='')}"
    tracker.cart_updated(f"cart-{tag}", email=email, items=[lamp], restore_url=restore)
    tracker.product_viewed(email=email, item=lamp)
    tracker.registration_started(email, params={"referrer": "newsletter"})
    tracker.opted_out(email, source="footer link")
    tracker.opted_in(email, source="checkout checkbox", basis="consent")
    tracker.logged_in(email)
    tracker.contact_upserted(email, first_name=tag.title())
    params = {"who": email.title()}
    tracker.custom_event("wishlist", key_value=email.upper(), params=params, marketing=True)
    clock.tick(timedelta(hours=1))
    tracker.scan()
    tracker.dispatch()
    [reminder] = [
        event
        for event in receiver.events
        if event["eventTypeKey"] == "abandoned_cart" and event["keyValue"] == email
    ]
    clock.tick(timedelta(minutes=5))
    open_link(tracker.engine, tracker.settings, link_token(reminder), tracker.clock())
    tracker.order_placed(f"order-{tag}", email=email, items=[lamp], cart_id=f"cart-{tag}")

    def rejected(body: Any) -> bool:
        return isinstance(body, dict) and body.get("keyValue") == f"rejected:{email}"

    receiver.rule(rejected, Reply(400, f"no contact {email}"))
    tracker.custom_event("rejected", key_value=f"rejected:{email}", params={"email": email})
    tracker.dispatch()


def queue_pending(tracker: Tracker, email: str) -> None:
    """Two events for ``email`` left pending: a password reset and a marketing event."""
    tracker.password_reset_requested(email, reset_url=f"https://shop.example/reset?for={email}")
    tracker.custom_event("wishlist", key_value=email, params={"email": email}, marketing=True)


# ------------------------------------------------------------------------------ backfill

PLACED = datetime(2024, 3, 22, 14, 30, 5, tzinfo=UTC)
"""When the backfill tests' past orders were placed (the first; each next one a minute later)."""


def past_order(n: int, **changes: Any) -> dict[str, Any]:
    """The ``n``-th past order of the backfill tests, as a mapping; ``changes`` replace fields."""
    order: dict[str, Any] = {
        "order_id": f"past-{n}",
        "email": f"buyer-{n}@example.com",
        "items": [Item(name="Hair styler", price="341.00", quantity=1, sku=f"hs-{n}")],
        "total": "341.00",
        "currency": "EUR",
        "status": "DELIVERED",
        "created": PLACED + timedelta(minutes=n),
    }
    order.update(changes)
    return order


def deliver_all(tracker: Tracker, passes: int = 50) -> int:
    """Dispatch until nothing is claimed (at most ``passes`` passes); how many were sent."""
    sent = 0
    for _ in range(passes):
        result = tracker.dispatch()
        sent += result.sent
        if not result.claimed:
            break
    return sent

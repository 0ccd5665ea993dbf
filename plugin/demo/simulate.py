"""Scripted shoppers against a real Tracker, a SQLite file and a local receiver, on a moved clock.

``simulate(n)`` plays ``n`` shoppers over simulated time (nothing sleeps: a :class:`FakeClock`
moves in 10-second ticks, and each tick runs one scan and one dispatch pass). Then it counts
what happened from the plugin's tables and the receiver's recorded requests only, and prints a
table. ``shop-events demo --simulate N`` calls it.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import sys
import tempfile
from collections.abc import Callable, Generator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from sqlalchemy import func, select

from plugin.config import Settings
from plugin.demo import catalog
from plugin.demo.receiver import Receiver, Reply
from plugin.items import Item
from plugin.models import CartState, Status, carts, outbox
from plugin.tracker import Tracker

SHOP_URL = "http://127.0.0.1:5000"
API_KEY = "simulation-key"
TICK = timedelta(seconds=10)
MAX_TICKS = 6 * 360
"""Six hours of shop time: far more than any plan needs; a bound, not a goal."""
REMINDER_PATIENCE = 180
"""Ticks a shopper waits for a reminder before going on without it (a dead letter, say)."""


class FakeClock:
    """A clock that only moves when told: pass it as ``Tracker(..., clock=clock)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2024, 1, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        """Move the time forward."""
        self.now += delta


# --------------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class Ticks:
    """Wait this many ticks."""

    count: int


@dataclasses.dataclass(frozen=True)
class Reminded:
    """Wait until the receiver has accepted this many reminders for the shopper's email."""

    count: int


@dataclasses.dataclass(frozen=True)
class Queued:
    """Wait until, right after a scan, the shopper's reminder is queued but not yet sent."""


Condition = Ticks | Reminded | Queued
Plan = Generator[Condition, None, None]


@dataclasses.dataclass
class Shopper:
    """One scripted shopper and the cart they build."""

    number: int
    profile: str
    email: str | None
    start_tick: int
    lines: dict[int, int]
    rng: random.Random

    @property
    def cart_id(self) -> str:
        """The shopper's cart id."""
        return f"sim-cart-{self.number}"

    def items(self) -> list[Item]:
        """The cart's products as the shop would send them."""
        out = []
        for product_id, quantity in self.lines.items():
            product = catalog.get(product_id)
            assert product is not None
            out.append(catalog.item(product, SHOP_URL, quantity))
        return out

    def total(self) -> Decimal:
        """The cart's value."""
        return sum((Decimal(i.price) * (i.quantity or 1) for i in self.items()), Decimal("0"))

    def change(self) -> None:
        """Add a product not yet in the cart, or one more of the first."""
        spare = [p.id for p in catalog.PRODUCTS if p.id not in self.lines]
        if spare:
            self.lines[self.rng.choice(spare)] = 1
        else:
            first = next(iter(self.lines))
            self.lines[first] += 1

    def update(self, tracker: Tracker) -> None:
        """Send the whole cart."""
        tracker.cart_updated(
            self.cart_id,
            email=self.email,
            items=self.items(),
            currency="EUR",
            restore_url=f"{SHOP_URL}/cart/restore/{self.cart_id}",
        )

    def buy(self, tracker: Tracker) -> None:
        """Place the order for the cart."""
        assert self.email is not None
        tracker.order_placed(
            f"sim-order-{self.number}",
            email=self.email,
            items=self.items(),
            total=self.total(),
            currency="EUR",
            cart_id=self.cart_id,
        )


def _abandons(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Ticks(1)
    s.change()
    s.update(t)


def _anonymous(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield from ()


def _buys_in_time(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Ticks(2)
    s.change()
    s.update(t)
    yield Ticks(3)
    s.buy(t)


def _buys_after_reminder(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Reminded(1)
    yield Ticks(2)
    s.buy(t)


def _changes_after_reminder(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Reminded(1)
    yield Ticks(1)
    s.change()
    s.update(t)


def _buys_while_queued(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Queued()
    s.buy(t)


def _clears(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Ticks(2)
    t.cart_cleared(s.cart_id)


PROFILES: dict[str, Callable[[Shopper, Tracker], Plan]] = {
    "abandons": _abandons,
    "buys in time": _buys_in_time,
    "buys after reminder": _buys_after_reminder,
    "changes after reminder": _changes_after_reminder,
    "buys while reminder queued": _buys_while_queued,
    "clears the cart": _clears,
    "anonymous": _anonymous,
}


@dataclasses.dataclass
class _Running:
    shopper: Shopper
    plan: Plan | None = None
    waiting: Condition | None = None
    since: int = 0
    done: bool = False


# ----------------------------------------------------------------------------- simulation


def simulate(
    n: int,
    seed: int = 1,
    *,
    faults: bool = True,
    out: TextIO | None = sys.stdout,
) -> dict[str, int]:
    """Play ``n`` shoppers, then count from the database and the receiver; print and return.

    Shoppers (profiles dealt in turn, shuffled by ``seed``) abandon their cart, buy before the
    1-minute timeout, buy after the reminder arrives, change the cart after the reminder (a new
    cart version, reminded again), buy while the reminder is queued but unsent (it is then
    superseded), empty the cart, or shop without an email (nothing can be sent). With
    ``faults``, the receiver now and then answers 500/503/429, refuses one event with a 400
    (a dead letter), and rejects the API key for a minute (delivery pauses, then resumes).

    Returned counts, all from the tables and ``receiver.requests``:

    - ``carts``: cart rows; ``converted``, ``cleared``, ``suppressed``, ``left_abandoned``,
      ``active``: cart rows by state now (they add up to ``carts``).
    - ``abandoned``: carts with at least one ``abandoned_cart`` outbox row; ``reminders``: those
      rows (one per cart version); ``rearmed`` = ``reminders - abandoned``.
    - ``orders``: outbox rows of the order event type.
    - ``enqueued``: all outbox rows; ``sent``, ``dead``, ``superseded``, ``pending`` (pending or
      in flight): rows by status.
    - ``requests``: requests the receiver answered; ``accepted``: those answered 2xx.
    - ``delivered``: ``sent`` rows matched one-to-one to an accepted request with the row's
      exact body bytes.
    - ``duplicates``: accepted requests beyond those matched, whose body is some row's body
      (at-least-once delivery resent it).
    - ``lost``: ``sent`` rows the receiver never accepted, plus rows in no known status, plus
      accepted requests whose body is no row's body at all. Every event is accounted for when
      ``enqueued == delivered + dead + superseded + pending`` and ``lost == 0``.
    """
    if n < 1:
        raise ValueError("simulate needs at least one shopper")
    rng = random.Random(seed)
    clock = FakeClock()
    with (
        tempfile.TemporaryDirectory(prefix="shop-events-sim-") as folder,
        Receiver(api_key=API_KEY, clock=clock) as receiver,
    ):
        settings = Settings.load(
            {
                "api": {"base_url": receiver.base_url, "key": API_KEY},
                "database": {"url": f"sqlite:///{Path(folder) / 'simulation.db'}"},
                "abandoned_cart": {"after": "1m", "contact_interval": "1m"},
                "scheduler": {"enabled": False},
            }
        )
        tracker = Tracker(settings, clock=clock)
        try:
            tracker.migrate()
            ticks = _play(tracker, receiver, clock, _shoppers(n, rng), rng, faults)
            counts = count(tracker, receiver)
        finally:
            tracker.shutdown()
            tracker.engine.dispose()
    if out is not None:
        _print_table(out, n, seed, ticks, faults, counts)
    return counts


def _shoppers(n: int, rng: random.Random) -> list[Shopper]:
    names = list(PROFILES)
    profiles = [names[i % len(names)] for i in range(n)]
    rng.shuffle(profiles)
    shoppers = []
    for number, profile in enumerate(profiles, start=1):
        products = rng.sample([p.id for p in catalog.PRODUCTS], rng.randint(1, 4))
        shoppers.append(
            Shopper(
                number=number,
                profile=profile,
                email=None if profile == "anonymous" else f"shopper{number}@example.com",
                start_tick=rng.randint(0, 18),
                lines={pid: rng.randint(1, 3) for pid in products},
                rng=random.Random(rng.random()),
            )
        )
    return shoppers


def _play(
    tracker: Tracker,
    receiver: Receiver,
    clock: FakeClock,
    shoppers: list[Shopper],
    rng: random.Random,
    faults: bool,
) -> int:
    """Run ticks until every plan is done and nothing is left to scan or send; returns ticks."""
    running = [_Running(s) for s in shoppers]
    reminder_key = tracker.settings.abandoned_cart.event_type_key
    tick = 0
    for tick in range(1, MAX_TICKS + 1):
        clock.advance(TICK)
        if faults:
            _inject_faults(receiver, tick, rng)
        reminded = collections.Counter(
            e.get("keyValue") for e in receiver.events if e.get("eventTypeKey") == reminder_key
        )
        for r in running:
            _step(r, tracker, tick, "before", reminded)
        tracker.scan()
        for r in running:
            _step(r, tracker, tick, "after", reminded)
        tracker.dispatch()
        if all(r.done for r in running) and _settled(tracker):
            break
    return tick


def _inject_faults(receiver: Receiver, tick: int, rng: random.Random) -> None:
    if tick == 9:
        receiver.script(Reply(400, "The event should have the following params: [phone]"))
    if tick == 14:
        receiver.api_key = "rotated-key"  # the account's key changed: the plugin's is wrong now
    if tick == 20:
        receiver.api_key = API_KEY
    if rng.random() < 0.08:
        receiver.script(
            rng.choice(
                [
                    Reply(503, "maintenance"),
                    Reply(500, "oops"),
                    Reply(429, "Too many requests", {"Retry-After": "30"}),
                ]
            )
        )


def _step(
    r: _Running, tracker: Tracker, tick: int, phase: str, reminded: collections.Counter[object]
) -> None:
    s = r.shopper
    if r.done or tick < s.start_tick:
        return
    if r.plan is None:
        if phase != "before":
            return
        r.plan = PROFILES[s.profile](s, tracker)
        _next(r, tick)
    while not r.done and r.waiting is not None and _ready(r, tracker, tick, phase, reminded):
        _next(r, tick)


def _next(r: _Running, tick: int) -> None:
    assert r.plan is not None
    try:
        r.waiting = next(r.plan)
        r.since = tick
    except StopIteration:
        r.waiting, r.done = None, True


def _ready(
    r: _Running, tracker: Tracker, tick: int, phase: str, reminded: collections.Counter[object]
) -> bool:
    waiting, s = r.waiting, r.shopper
    if isinstance(waiting, Ticks):
        return phase == "before" and tick - r.since >= waiting.count
    if isinstance(waiting, Reminded):
        patience_over = tick - r.since >= REMINDER_PATIENCE
        return phase == "before" and (reminded[s.email] >= waiting.count or patience_over)
    if isinstance(waiting, Queued):
        if phase != "after":
            return False
        if tick - r.since >= REMINDER_PATIENCE:
            return True
        with tracker.engine.connect() as conn:
            queued = conn.execute(
                select(func.count())
                .select_from(outbox)
                .where(
                    outbox.c.subject_type == "cart",
                    outbox.c.subject_id == s.cart_id,
                    outbox.c.status == Status.PENDING.value,
                )
            ).scalar_one()
        return queued > 0
    return True


def _settled(tracker: Tracker) -> bool:
    with tracker.engine.connect() as conn:
        unsent = conn.execute(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.status.in_([Status.PENDING.value, Status.IN_FLIGHT.value]))
        ).scalar_one()
        active = conn.execute(
            select(func.count()).select_from(carts).where(carts.c.state == CartState.ACTIVE.value)
        ).scalar_one()
    return unsent == 0 and active == 0


# --------------------------------------------------------------------------------- counting


def count(tracker: Tracker, receiver: Receiver) -> dict[str, int]:
    """The simulation's numbers, from the plugin's tables and the receiver's requests only.

    See :func:`simulate` for what each number means.
    """
    reminder_key = tracker.settings.abandoned_cart.event_type_key
    order_key = tracker.settings.orders.event_type_key
    with tracker.engine.connect() as conn:
        grouped = conn.execute(select(carts.c.state, func.count()).group_by(carts.c.state))
        states: dict[str, int] = {str(state): int(n) for state, n in grouped}
        rows = conn.execute(
            select(
                outbox.c.status,
                outbox.c.body,
                outbox.c.event_type_key,
                outbox.c.subject_type,
                outbox.c.subject_id,
            )
        ).all()
    reminders = [r for r in rows if r.subject_type == "cart" and r.event_type_key == reminder_key]
    by_status = collections.Counter(str(r.status) for r in rows)
    known = {s.value for s in Status}

    answered = receiver.requests
    accepted = collections.Counter(
        q.raw for q in answered if 200 <= q.status < 300 and q.path.startswith("/api/")
    )
    bodies_all = collections.Counter(str(r.body).encode("utf-8") for r in rows)
    bodies_sent = collections.Counter(
        str(r.body).encode("utf-8") for r in rows if r.status == Status.SENT.value
    )
    delivered = duplicates = unreceived = phantom = 0
    for body in bodies_all.keys() | accepted.keys():
        matched = min(bodies_sent[body], accepted[body])
        delivered += matched
        unreceived += bodies_sent[body] - matched
        extra = accepted[body] - matched
        if bodies_all[body]:
            duplicates += extra
        else:
            phantom += extra
    unknown_status = sum(c for s, c in by_status.items() if s not in known)

    total_carts = sum(states.values())
    return {
        "carts": total_carts,
        "abandoned": len({r.subject_id for r in reminders}),
        "reminders": len(reminders),
        "rearmed": len(reminders) - len({r.subject_id for r in reminders}),
        "converted": states.get(CartState.CONVERTED.value, 0),
        "cleared": states.get(CartState.CLEARED.value, 0),
        "suppressed": states.get(CartState.SUPPRESSED.value, 0),
        "left_abandoned": states.get(CartState.ABANDONED.value, 0),
        "active": states.get(CartState.ACTIVE.value, 0),
        "orders": sum(1 for r in rows if r.event_type_key == order_key),
        "enqueued": len(rows),
        "sent": by_status[Status.SENT.value],
        "delivered": delivered,
        "dead": by_status[Status.DEAD.value],
        "superseded": by_status[Status.SUPERSEDED.value],
        "pending": by_status[Status.PENDING.value] + by_status[Status.IN_FLIGHT.value],
        "requests": len(answered),
        "accepted": sum(accepted.values()),
        "duplicates": duplicates,
        "lost": unreceived + unknown_status + phantom,
    }


_LABELS: tuple[tuple[str, str], ...] = (
    ("carts", "cart rows"),
    ("abandoned", "carts with an abandoned_cart event queued"),
    ("reminders", "abandoned_cart events (one per cart version)"),
    ("rearmed", "extra reminders for carts changed after one"),
    ("converted", "carts converted by an order"),
    ("cleared", "carts emptied"),
    ("suppressed", "carts due but not emitted (no email, or capped)"),
    ("orders", "order events"),
    ("enqueued", "outbox rows"),
    ("delivered", "sent and received with the exact body"),
    ("superseded", "dropped at send time (order, change, clear)"),
    ("dead", "refused by the platform (dead letters, replayable)"),
    ("pending", "still waiting to be sent"),
    ("requests", "HTTP requests the receiver answered"),
    ("duplicates", "extra copies received (at-least-once)"),
    ("lost", "sent-but-never-received + unexplained"),
)


def _print_table(
    out: TextIO, n: int, seed: int, ticks: int, faults: bool, counts: dict[str, int]
) -> None:
    minutes, seconds = divmod(int((TICK * ticks).total_seconds()), 60)
    elapsed = f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    lines = [f"shop-events simulation: {n} shoppers, seed {seed}, {elapsed} of shop time"]
    if faults:
        lines.append(
            "  the receiver was told to fail now and then (500/503/429), refuse one event (400)"
            " and reject the API key for a minute"
        )
    width = max(len(k) for k, _ in _LABELS)
    lines += [f"  {key:<{width}}  {counts[key]:>6}  {label}" for key, label in _LABELS]
    balance = counts["delivered"] + counts["dead"] + counts["superseded"] + counts["pending"]
    verdict = "every event accounted for" if counts["lost"] == 0 else "EVENTS LOST"
    lines.append(
        f"  {'':<{width}}  {'':>6}  {counts['enqueued']} enqueued = {balance} delivered + dead "
        f"+ superseded + pending: {verdict}"
    )
    _write(out, lines)


def _write(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        print(line, file=out)

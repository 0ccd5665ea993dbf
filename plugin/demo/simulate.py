"""Scripted shoppers against a real Tracker, a SQLite file and a local receiver, on a moved clock.

``simulate(n)`` plays ``n`` shoppers over simulated time (nothing sleeps: a :class:`FakeClock`
moves in 10-second ticks, and each tick runs one scan and one dispatch pass). The shoppers go
through every flow: carts (reminded in three steps, with recovery links), product browsing
(some anonymous, identified when they sign in), registrations, logins and password resets,
contact updates, orders and their status changes (also sent to the Orders API) and opt-outs;
some open the link in their reminder, and some order after a reminder. Then it counts what
happened from the plugin's tables and the receiver's recorded requests only, and prints a table
per flow and event type, and the recovery figures of the database's report beside the same
figures counted from the receiver's log and the links the shoppers opened.
``shop-events demo --simulate N`` calls it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import random
import sys
import tempfile
from collections.abc import Callable, Generator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from ..config import Settings
from ..payload.items import Item
from ..payload.links import LINK_PATH
from ..payload.orders_api import ORDERS_API_PATH, ORDERS_API_TYPE
from ..payload.validation import encode_body
from ..recovery.links import open_link
from ..recovery.report import NO_CURRENCY
from ..storage import activity, outbox
from ..storage.enums import FlowState, OutboxStatus, Subject
from ..testing import Received, Receiver, Reply
from ..tracker import Tracker
from . import catalog

SHOP_URL = "http://127.0.0.1:5000"
API_KEY = "simulation-key"
TICK = timedelta(seconds=10)
MAX_TICKS = 6 * 360
"""Six hours of shop time: far more than any plan needs; a bound, not a goal."""
REMINDER_PATIENCE = 180
"""Ticks a shopper waits for a reminder before going on without it (a dead letter, say)."""
CART_STEPS = ("1m", "3m", "6m")
"""The abandoned-cart reminders' steps: a shop would write ``["1h", "24h", "72h"]``; in shop
time moved 10 seconds a tick, minutes keep the run short."""
RECOVERY_SECRET = "simulation-recovery-secret"
SETTINGS: dict[str, dict[str, Any]] = {
    "abandoned_cart": {"steps": list(CART_STEPS), "contact_interval": "1m"},
    "abandoned_browse": {"after": "1m", "contact_interval": "1m"},
    "unfinished_registration": {"after": "2m", "contact_interval": "1m"},
    "orders": {"api": True},
    "contacts": {"fields": {"10001": "date"}, "default_region": "UA"},
    "recovery": {"links": True, "base_url": SHOP_URL, "secret": RECOVERY_SECRET},
    "scheduler": {"enabled": False},
}
"""The simulation's shop: short timeouts, carts reminded in three steps with recovery links,
orders also sent to the Orders API."""

ACTIVITY: tuple[tuple[str, Subject], ...] = (
    ("carts", Subject.CART),
    ("browses", Subject.BROWSE),
    ("registrations", Subject.REGISTRATION),
)
MEASURES = ("queued", "delivered", "superseded", "dead", "pending", "lost")
"""What is counted per event type (``<type>.<measure>`` in the returned counts)."""
FIRST_NAMES = ("Ann", "Bohdan", "Chloé", "Dmytro", "Eva", "Farid", "Greta", "Hiro")


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
    """Wait until the receiver has accepted this many abandoned-cart reminders for the
    shopper's email.
    """

    count: int


@dataclasses.dataclass(frozen=True)
class Queued:
    """Wait until, right after a scan, the shopper's reminder is queued but not yet sent."""


@dataclasses.dataclass(frozen=True)
class OpenLink:
    """Open the recovery link of the shopper's last abandoned-cart reminder, as the receiver
    got it, ``times`` times; then go on at once (nothing when no reminder came)."""

    times: int = 1


Condition = Ticks | Reminded | Queued | OpenLink
Plan = Generator[Condition, None, None]


@dataclasses.dataclass
class Shopper:
    """One scripted shopper, the cart they build and the products they look at."""

    number: int
    profile: str
    email: str | None
    start_tick: int
    lines: dict[int, int]
    rng: random.Random
    nth: int = 0
    """How many shoppers of the same profile came before this one."""

    @property
    def cart_id(self) -> str:
        """The shopper's cart id."""
        return f"sim-cart-{self.number}"

    @property
    def order_id(self) -> str:
        """The id of the shopper's order."""
        return f"sim-order-{self.number}"

    @property
    def visitor_id(self) -> str:
        """The shopper's anonymous visitor id (a cookie) before signing in."""
        return f"sim-visitor-{self.number}"

    @property
    def first_name(self) -> str:
        """The shopper's first name."""
        return FIRST_NAMES[self.number % len(FIRST_NAMES)]

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

    def view(self, tracker: Tracker, *, anonymous: bool = False) -> None:
        """Look at a product page, signed in or (``anonymous``) under the visitor id."""
        product = self.rng.choice(catalog.PRODUCTS)
        who = {"visitor_id": self.visitor_id} if anonymous else {"email": self.email}
        tracker.product_viewed(item=catalog.item(product, SHOP_URL), **who)

    def buy(self, tracker: Tracker) -> None:
        """Place the order for the cart."""
        assert self.email is not None
        tracker.order_placed(
            self.order_id,
            email=self.email,
            items=self.items(),
            total=self.total(),
            currency="EUR",
            cart_id=self.cart_id,
        )


def _email(s: Shopper) -> str:
    assert s.email is not None
    return s.email


# carts


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


def _buys_after_second_reminder(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Reminded(2)
    yield Ticks(1)
    s.buy(t)


def _clicks_and_buys(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Reminded(1)
    yield Ticks(1)
    yield OpenLink()
    yield Ticks(2)
    s.buy(t)


def _clicks_then_buys_after_second_reminder(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Reminded(1)
    yield OpenLink()
    yield Reminded(2)
    yield Ticks(1)
    s.buy(t)


def _clicks_and_leaves(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Reminded(1)
    yield OpenLink(times=2)  # opened twice: one click


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


# browsing


def _browses_and_leaves(s: Shopper, t: Tracker) -> Plan:
    for _ in range(s.rng.randint(2, 4)):
        s.view(t)
        yield Ticks(1)


def _browses_then_buys(s: Shopper, t: Tracker) -> Plan:
    s.view(t)
    yield Ticks(1)
    s.view(t)
    yield Ticks(1)
    s.update(t)  # the browse is cancelled: the shopper carted
    yield Ticks(2)
    s.buy(t)


def _browses_anonymously_then_signs_in(s: Shopper, t: Tracker) -> Plan:
    s.view(t, anonymous=True)
    yield Ticks(1)
    s.view(t, anonymous=True)
    yield Ticks(s.rng.choice([1, 8]))  # sometimes only after the browse came due unreachable
    t.identify(s.visitor_id, _email(s))
    t.logged_in(_email(s))


# accounts


def _registers(s: Shopper, t: Tracker) -> Plan:
    t.registration_started(_email(s), params={"source": "header"})
    yield Ticks(2)
    t.registration_completed(_email(s))
    t.contact_upserted(
        _email(s),
        first_name=s.first_name,
        last_name="Shopper",
        phone=f"+38095{5_500_000 + s.number:07d}",
        created=True,
    )
    t.logged_in(_email(s))


def _abandons_registration(s: Shopper, t: Tracker) -> Plan:
    t.registration_started(_email(s), params={"source": "checkout", "first_name": s.first_name})
    yield from ()


def _resets_password(s: Shopper, t: Tracker) -> Plan:
    t.logged_in(_email(s))
    yield Ticks(1)
    t.password_reset_requested(_email(s), reset_url=f"{SHOP_URL}/reset/{s.number}")
    yield Ticks(2)
    t.password_changed(_email(s))


def _updates_profile(s: Shopper, t: Tracker) -> Plan:
    t.contact_upserted(
        _email(s),
        first_name=s.first_name,
        phone=f"095{5_500_000 + s.number:07d}",  # local: read in contacts.default_region
        fields={10001: dt.date(1970 + s.number % 40, 1 + s.number % 12, 1 + s.number % 28)},
    )
    yield from ()


# orders


def _order_moves_on(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Ticks(1)
    s.buy(t)
    yield Ticks(3)
    if s.nth % 2:
        t.order_status_changed(s.order_id, status="CANCELLED")
        return
    t.order_status_changed(s.order_id, status="SHIPPED")
    yield Ticks(3)
    t.order_status_changed(s.order_id, status="DELIVERED")


# consent


def _opts_out(s: Shopper, t: Tracker) -> Plan:
    s.view(t)
    s.update(t)
    yield Ticks(1)
    t.opted_out(_email(s))  # before the timeouts: cart and browse are skipped
    t.logged_in(_email(s))  # transactional: still sent


def _opts_out_while_queued(s: Shopper, t: Tracker) -> Plan:
    s.update(t)
    yield Queued()
    t.opted_out(_email(s))  # the queued reminder is superseded


PROFILES: dict[str, Callable[[Shopper, Tracker], Plan]] = {
    "abandons": _abandons,
    "buys in time": _buys_in_time,
    "buys after reminder": _buys_after_reminder,
    "buys after the second reminder": _buys_after_second_reminder,
    "clicks the link and buys": _clicks_and_buys,
    "clicks, buys after the second reminder": _clicks_then_buys_after_second_reminder,
    "clicks the link and leaves": _clicks_and_leaves,
    "changes after reminder": _changes_after_reminder,
    "buys while reminder queued": _buys_while_queued,
    "clears the cart": _clears,
    "anonymous": _anonymous,
    "browses and leaves": _browses_and_leaves,
    "browses then buys": _browses_then_buys,
    "browses anonymously, signs in": _browses_anonymously_then_signs_in,
    "registers": _registers,
    "abandons registration": _abandons_registration,
    "resets password": _resets_password,
    "updates profile": _updates_profile,
    "order moves on": _order_moves_on,
    "opts out": _opts_out,
    "opts out while reminder queued": _opts_out_while_queued,
}


@dataclasses.dataclass(frozen=True)
class OpenedLink:
    """One opening of a recovery link, as the simulation saw it (not read back from the
    plugin's tables)."""

    token: str
    cart_id: str
    step: int
    """The ``step`` param of the reminder the link came in."""
    cart: str
    """The reminder's ``items`` param: the cart version, so the reminders of one sequence."""
    at: datetime


class Links:
    """The simulation's own record of the recovery links the shoppers opened.

    A shopper opens the link of their last abandoned-cart reminder, taken from the receiver's
    copy of the event (its ``cart_url``), through :func:`~shop_events.recovery.links.open_link`,
    as the shop's ``/shop-events/r/<token>`` page does.
    """

    def __init__(self, receiver: Receiver, reminder_key: str) -> None:
        self._receiver = receiver
        self._reminder_key = reminder_key
        self.opened: list[OpenedLink] = []

    def open(self, shopper: Shopper, tracker: Tracker, times: int) -> None:
        """Open the shopper's last reminder's link ``times`` times (nothing if none came)."""
        mine = [
            e
            for e in self._receiver.events
            if e.get("eventTypeKey") == self._reminder_key and e.get("keyValue") == shopper.email
        ]
        if not mine:
            return
        event = mine[-1]
        params = Receiver.params(event)
        url = str(params.get("cart_url") or "")
        prefix = f"{SHOP_URL}{LINK_PATH}"
        if not url.startswith(prefix):
            raise RuntimeError(f"{shopper.email}'s reminder has no recovery link: {url!r}")
        token = url.removeprefix(prefix)
        for _ in range(times):
            now = tracker.clock()
            opened = open_link(tracker.engine, tracker.settings, token, now)
            if opened.cart_id != params.get("cart_id"):
                wanted = params.get("cart_id")
                raise RuntimeError(f"the link of cart {wanted!r} opened cart {opened.cart_id!r}")
            self.opened.append(
                OpenedLink(
                    token=token,
                    cart_id=opened.cart_id,
                    step=int(params.get("step") or 0),
                    cart=str(params.get("items")),
                    at=now,
                )
            )


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

    Shoppers (profiles dealt in turn, shuffled by ``seed``) abandon their cart (reminded after
    1, 3 and 6 minutes: :data:`CART_STEPS`), buy before the first reminder, buy after the first
    or the second reminder arrives, open the recovery link in their reminder (once, or twice:
    one click) and buy, or buy only after the next reminder, or leave, change the cart after the
    reminder (a new cart version, reminded again from step 1), buy while the reminder is
    queued but unsent (it is then superseded), empty the cart, shop without an email (nothing
    can be sent), browse and leave (an abandoned browse), browse then cart and buy (the browse
    is cancelled), browse anonymously and sign in later (the views follow them), register or
    give up registering (an unfinished registration after 2 minutes), reset their password,
    update their contact data, see their order shipped, delivered or cancelled, or opt out of
    marketing (before the timeout, or while a reminder is queued). With ``faults``, the
    receiver now and then answers 500/503/429, refuses one request with a 400 (dead letters),
    and rejects the API key for a minute (delivery pauses, then resumes).

    Returned counts, all from the tables and ``receiver.requests``:

    - ``carts``, ``browses``, ``registrations``: rows of each; ``<table>.<state>``: rows by
      state now (``active``, ``abandoned``, ``converted``, ``cleared``, ``completed``,
      ``suppressed``; they add up). For carts also, as before: ``converted``, ``cleared``,
      ``suppressed``, ``left_abandoned``, ``active``.
    - ``abandoned``: carts with at least one ``abandoned_cart`` outbox row; ``reminders``: those
      rows (one per cart version and step); ``rearmed`` = ``reminders - abandoned`` (later steps,
      and changed carts reminded again).
    - ``orders``: outbox rows of the order-created event type.
    - ``<event type>.<measure>`` for every event type (``abandoned_browse.delivered`` …,
      ``orders_api.*`` for the Orders API): ``queued`` rows, ``delivered``, ``superseded``,
      ``dead``, ``pending`` and ``lost`` as below.
    - ``enqueued``: all outbox rows; ``sent``, ``dead``, ``superseded``, ``pending`` (pending or
      in flight): rows by status.
    - ``requests``: requests the receiver answered; ``failed``: those not answered 2xx.
      ``accepted``: events and orders in requests answered 2xx (an Orders API request carries
      several); ``refused``: those in requests refused for good (4xx other than 401, 403, 408,
      425, 429), which the plugin must have dead-lettered.
    - ``delivered``: ``sent`` rows matched one-to-one to an accepted event or order with the
      row's exact body bytes.
    - ``duplicates``: accepted events or orders beyond those matched, whose body is some row's
      body (at-least-once delivery resent it).
    - ``lost``: ``sent`` rows the receiver never accepted, plus rows in no known status, plus
      accepted events or orders whose body is no row's body at all. Every event is accounted
      for when ``enqueued == delivered + dead + superseded + pending`` and ``lost == 0``.
    - ``recovery.<figure>`` from ``tracker.recovery_report`` over the whole run (the
      abandoned-cart flow), and ``recovery.<figure>.seen`` the same figure counted from the
      receiver's log and the links the shoppers opened (:func:`recovery_figures`):
      ``delivered.step<n>``, ``clicks``, ``recovered``, ``recovered_clicked`` and
      ``revenue.<currency>`` (in cents); ``recovery.links_opened``: every opening, repeats
      included; ``recovery.disagree``: the figures whose two counts differ (0 when all agree).
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
                **SETTINGS,
            }
        )
        tracker = Tracker(settings, clock=clock)
        links = Links(receiver, settings.abandoned_cart.event_type_key)
        started = clock()
        try:
            tracker.migrate()
            ticks = _play(tracker, receiver, clock, _shoppers(n, rng), rng, faults, links)
            counts = count(tracker, receiver)
            figures = recovery_figures(tracker, receiver, links.opened, started, clock() + TICK)
        finally:
            tracker.shutdown()
            tracker.engine.dispose()
    counts.update(_recovery_counts(figures, links.opened))
    if out is not None:
        _print_table(out, n, seed, ticks, faults, counts, figures)
    return counts


def _shoppers(n: int, rng: random.Random) -> list[Shopper]:
    names = list(PROFILES)
    profiles = [names[i % len(names)] for i in range(n)]
    rng.shuffle(profiles)
    shoppers = []
    seen: collections.Counter[str] = collections.Counter()
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
                nth=seen[profile],
            )
        )
        seen[profile] += 1
    return shoppers


def _play(
    tracker: Tracker,
    receiver: Receiver,
    clock: FakeClock,
    shoppers: list[Shopper],
    rng: random.Random,
    faults: bool,
    links: Links,
) -> int:
    """Run ticks until every plan is done and nothing is left to scan or send; returns ticks."""
    running = [_Running(s) for s in shoppers]
    reminder_key = tracker.settings.abandoned_cart.event_type_key
    settings = tracker.settings
    flows = (settings.abandoned_cart, settings.abandoned_browse, settings.unfinished_registration)
    longest = max(max(flow.delays) for flow in flows)
    injector = _Faults(receiver, rng)
    quiet_since: datetime | None = None
    tick = 0
    for tick in range(1, MAX_TICKS + 1):
        clock.advance(TICK)
        if faults:
            injector.inject(tick, shopping=not all(r.done for r in running))
        reminded = collections.Counter(
            e.get("keyValue") for e in receiver.events if e.get("eventTypeKey") == reminder_key
        )
        for r in running:
            _step(r, tracker, tick, "before", reminded, links)
        tracker.scan()
        for r in running:
            _step(r, tracker, tick, "after", reminded, links)
        tracker.dispatch()
        if quiet_since is None and all(r.done for r in running):
            quiet_since = clock()
        # Once the shoppers are done, every later step is due within the longest delay.
        if quiet_since is not None and clock() - quiet_since >= longest and _settled(tracker):
            break
    return tick


@dataclasses.dataclass
class _Faults:
    """The receiver's scripted trouble: one 400, a rotated key, and random transient errors."""

    receiver: Receiver
    rng: random.Random
    arrived: int = -1
    """Requests that had arrived when the last random error was scripted."""

    def inject(self, tick: int, shopping: bool) -> None:
        receiver = self.receiver
        if tick == 9:
            receiver.script(Reply(400, "The event should have the following params: [phone]"))
        if tick == 14:
            receiver.api_key = "rotated-key"  # the account's key changed: the plugin's is wrong
        if tick == 20:
            receiver.api_key = API_KEY
        # Random errors only while shoppers shop, and not piling up while nothing is sent:
        # otherwise the last retries of the day would meet nothing but errors.
        if shopping and receiver.arrived > self.arrived and self.rng.random() < 0.08:
            self.arrived = receiver.arrived
            receiver.script(
                self.rng.choice(
                    [
                        Reply(503, "maintenance"),
                        Reply(500, "oops"),
                        # a short Retry-After: the transport holds every send for it, in real time
                        Reply(429, "Too many requests", {"Retry-After": "1"}),
                    ]
                )
            )


def _step(
    r: _Running,
    tracker: Tracker,
    tick: int,
    phase: str,
    reminded: collections.Counter[object],
    links: Links,
) -> None:
    s = r.shopper
    if r.done or tick < s.start_tick:
        return
    if r.plan is None:
        if phase != "before":
            return
        r.plan = PROFILES[s.profile](s, tracker)
        _next(r, tick)
    while not r.done and r.waiting is not None:
        if isinstance(r.waiting, OpenLink):
            links.open(s, tracker, r.waiting.times)
        elif not _ready(r, tracker, tick, phase, reminded):
            return
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
            return outbox.count_pending(conn, Subject.CART, s.cart_id) > 0
    return True


def _settled(tracker: Tracker) -> bool:
    """Nothing left to send, and no cart, browse or registration still waiting to come due
    (later steps: see the caller)."""
    with tracker.engine.connect() as conn:
        by_status = outbox.summarize(conn).by_status
        active = sum(
            activity.count_in_state(conn, subject, FlowState.ACTIVE) for _, subject in ACTIVITY
        )
    unsent = by_status[OutboxStatus.PENDING.value] + by_status[OutboxStatus.IN_FLIGHT.value]
    return unsent == 0 and active == 0


# --------------------------------------------------------------------------------- counting


def event_types(settings: Settings) -> list[str]:
    """The event types the shop's settings can raise, in the table's order."""
    orders = settings.orders
    keys = settings.events
    listed = [
        settings.abandoned_cart.event_type_key,
        settings.abandoned_browse.event_type_key,
        settings.unfinished_registration.event_type_key,
        orders.event_type_key,
        orders.updated_event_type_key,
        *orders.status_events.values(),
        *([ORDERS_API_TYPE] if orders.api else []),
        keys.login,
        keys.password_change,
        keys.password_reset,
        keys.create_contact,
        keys.update_contact,
    ]
    return list(dict.fromkeys(listed))


def _units(request: Received) -> list[bytes]:
    """What one request carried: an event's body, or each order of an Orders API batch
    encoded as the outbox stores it.
    """
    if request.path.endswith(f"/{ORDERS_API_PATH}") and isinstance(request.json, dict):
        orders = request.json.get("orders")
        if isinstance(orders, list):
            return [encode_body(order) for order in orders]
    return [request.raw]


def _refused_for_good(status: int) -> bool:
    """A 4xx the plugin dead-letters (not a bad key, not a retryable one)."""
    return 400 <= status < 500 and status not in (401, 403, 408, 425, 429)


def count(tracker: Tracker, receiver: Receiver) -> dict[str, int]:
    """The simulation's numbers, from the plugin's tables and the receiver's requests only.

    See :func:`simulate` for what each number means.
    """
    settings = tracker.settings
    reminder_key = settings.abandoned_cart.event_type_key
    order_key = settings.orders.event_type_key
    counts: dict[str, int] = {}
    with tracker.engine.connect() as conn:
        for name, subject in ACTIVITY:
            states = activity.count_by_state(conn, subject)
            counts[name] = sum(states.values())
            for state in FlowState:
                counts[f"{name}.{state.value}"] = states.get(state.value, 0)
            unknown = set(states) - {s.value for s in FlowState}
            counts[f"{name}.unknown"] = sum(states[s] for s in unknown)
        rows = outbox.every_row(conn)
    reminders = [
        r for r in rows if r.subject_type == Subject.CART and r.event_type_key == reminder_key
    ]
    by_status = collections.Counter(str(r.status) for r in rows)
    known = {s.value for s in OutboxStatus}

    # events and orders are POSTed; a GET is the plugin checking its key, and carries none
    answered = [q for q in receiver.requests if q.path.startswith("/api/") and q.method == "POST"]
    accepted: collections.Counter[bytes] = collections.Counter()
    refused = failed = 0
    for request in answered:
        if 200 <= request.status < 300:
            accepted.update(_units(request))
            continue
        failed += 1
        if _refused_for_good(request.status):
            refused += len(_units(request))

    types = event_types(settings)
    types += sorted({str(r.event_type_key) for r in rows} - set(types))
    per: dict[str, collections.Counter[str]] = {t: collections.Counter() for t in types}
    type_of: dict[bytes, str] = {}
    for r in rows:
        body = str(r.body).encode("utf-8")
        kind = str(r.event_type_key)
        type_of[body] = kind
        per[kind]["queued"] += 1
        status = str(r.status)
        if status in (OutboxStatus.PENDING.value, OutboxStatus.IN_FLIGHT.value):
            per[kind]["pending"] += 1
        elif status in (OutboxStatus.SUPERSEDED.value, OutboxStatus.DEAD.value):
            per[kind][status] += 1
        elif status not in known:
            per[kind]["lost"] += 1

    bodies_all = collections.Counter(str(r.body).encode("utf-8") for r in rows)
    bodies_sent = collections.Counter(
        str(r.body).encode("utf-8") for r in rows if r.status == OutboxStatus.SENT.value
    )
    delivered = duplicates = unreceived = phantom = 0
    for body in bodies_all.keys() | accepted.keys():
        matched = min(bodies_sent[body], accepted[body])
        delivered += matched
        unreceived += bodies_sent[body] - matched
        extra = accepted[body] - matched
        if bodies_all[body]:
            duplicates += extra
            per[type_of[body]]["delivered"] += matched
            per[type_of[body]]["lost"] += bodies_sent[body] - matched
        else:
            phantom += extra
    unknown_status = sum(c for s, c in by_status.items() if s not in known)

    for kind, measured in per.items():
        for measure in MEASURES:
            counts[f"{kind}.{measure}"] = measured[measure]
    counts.update(
        {
            "abandoned": len({r.subject_id for r in reminders}),
            "reminders": len(reminders),
            "rearmed": len(reminders) - len({r.subject_id for r in reminders}),
            "converted": counts["carts.converted"],
            "cleared": counts["carts.cleared"],
            "suppressed": counts["carts.suppressed"],
            "left_abandoned": counts["carts.abandoned"],
            "active": counts["carts.active"],
            "orders": sum(1 for r in rows if r.event_type_key == order_key),
            "enqueued": len(rows),
            "sent": by_status[OutboxStatus.SENT.value],
            "delivered": delivered,
            "dead": by_status[OutboxStatus.DEAD.value],
            "superseded": by_status[OutboxStatus.SUPERSEDED.value],
            "pending": by_status[OutboxStatus.PENDING.value]
            + by_status[OutboxStatus.IN_FLIGHT.value],
            "requests": len(answered),
            "failed": failed,
            "accepted": sum(accepted.values()),
            "refused": refused,
            "duplicates": duplicates,
            "phantom": phantom,
            "lost": unreceived + unknown_status + phantom,
        }
    )
    return counts


@dataclasses.dataclass(frozen=True)
class Figure:
    """One recovery figure: from the database's report, and counted independently."""

    key: str
    """Its name in the counts (``delivered.step1``, ``clicks``, ``revenue.EUR`` …)."""
    label: str
    report: int | Decimal
    """From ``tracker.recovery_report``."""
    seen: int | Decimal
    """From the receiver's log and the links the shoppers opened."""

    @property
    def agrees(self) -> bool:
        """Whether both counts are the same."""
        return self.report == self.seen


@dataclasses.dataclass(frozen=True)
class _Reminder:
    at: datetime
    event_type: str
    email: str
    cart_id: str
    step: int
    cart: str


def recovery_figures(
    tracker: Tracker,
    receiver: Receiver,
    opened: list[OpenedLink],
    since: datetime,
    until: datetime,
) -> list[Figure]:
    """The abandoned-cart flow's recovery figures over ``[since, until)``: from the database's
    report, and counted again from what the receiver accepted (reminders, orders, and when)
    and the links the shoppers opened, by the rules of attribution.

    An order is recovered when its contact got a reminder (of any flow) at most
    ``recovery.attribution_window`` before it; it is credited to the last one, and clicked when
    a link of that reminder's sequence (its cart, at the same contents) was opened before it.
    The receiver's time of an order is when it was accepted, which a retry may make later than
    when it was placed; no reminder of the contact arrives in between, since the order
    supersedes those still queued.
    """
    settings = tracker.settings
    report = tracker.recovery_report(since=since, until=until).cart
    cart_key = settings.abandoned_cart.event_type_key
    reminder_keys = {
        cart_key,
        settings.abandoned_browse.event_type_key,
        settings.unfinished_registration.event_type_key,
    }
    order_key = settings.orders.event_type_key
    window = settings.recovery.attribution_window

    first_seen: dict[bytes, tuple[datetime, dict[str, Any]]] = {}
    for q in receiver.requests:
        accepted = 200 <= q.status < 300 and q.method == "POST" and isinstance(q.json, dict)
        if accepted and "eventTypeKey" in q.json and q.raw not in first_seen:
            first_seen[q.raw] = (q.time, q.json)  # a resent event counts once, when first accepted
    reminders: list[_Reminder] = []
    orders: dict[str, tuple[datetime, str, Decimal, str]] = {}
    for at, event in first_seen.values():
        kind, params = event.get("eventTypeKey"), Receiver.params(event)
        if kind in reminder_keys:
            reminders.append(
                _Reminder(
                    at=at,
                    event_type=str(kind),
                    email=str(event.get("keyValue")),
                    cart_id=str(params.get("cart_id")),
                    step=int(params.get("step") or 1),
                    cart=str(params.get("items")),
                )
            )
        elif kind == order_key:
            orders.setdefault(
                str(params.get("order_id")),
                (
                    at,
                    str(event.get("keyValue")),
                    Decimal(str(params.get("total"))),
                    str(params.get("currency") or NO_CURRENCY),
                ),
            )

    delivered = collections.Counter(
        r.step for r in reminders if r.event_type == cart_key and since <= r.at < until
    )
    clicks = len({o.token for o in opened if since <= o.at < until})
    recovered = recovered_clicked = 0
    revenue: dict[str, Decimal] = {}
    for at, email, total, currency in orders.values():
        before = [r for r in reminders if r.email == email and at - window <= r.at <= at]
        if not before or not since <= at < until:
            continue
        last = max(before, key=lambda r: (r.at, r.step))
        if last.event_type != cart_key:
            continue
        recovered += 1
        recovered_clicked += any(
            o.cart_id == last.cart_id and o.cart == last.cart and o.at <= at for o in opened
        )
        revenue[currency] = revenue.get(currency, Decimal(0)) + total

    steps = range(1, len(settings.abandoned_cart.delays) + 1)
    figures = [
        Figure(
            f"delivered.step{n}",
            f"step {n} delivered",
            report.reminders_delivered.get(n, 0),
            delivered[n],
        )
        for n in steps
    ]
    figures += [
        Figure("clicks", "clicks (links opened)", report.clicks, clicks),
        Figure("recovered", "recovered orders", report.recovered_orders, recovered),
        Figure("recovered_clicked", "  after a click", report.recovered_clicked, recovered_clicked),
    ]
    for currency in sorted(revenue.keys() | report.recovered_revenue.keys()):
        figures.append(
            Figure(
                f"revenue.{currency}",
                f"revenue {currency}",
                report.recovered_revenue.get(currency, Decimal(0)),
                revenue.get(currency, Decimal(0)),
            )
        )
    return figures


def _cents(amount: int | Decimal) -> int:
    return int((Decimal(amount) * 100).to_integral_value())


def _recovery_counts(figures: list[Figure], opened: list[OpenedLink]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for figure in figures:
        money = figure.key.startswith("revenue.")
        value = _cents if money else int
        counts[f"recovery.{figure.key}"] = value(figure.report)
        counts[f"recovery.{figure.key}.seen"] = value(figure.seen)
    counts["recovery.links_opened"] = len(opened)
    counts["recovery.disagree"] = sum(not figure.agrees for figure in figures)
    return counts


def types_in(counts: dict[str, int]) -> list[str]:
    """The event types a count of :func:`count` has numbers for, in its order."""
    return [key.removesuffix(".queued") for key in counts if key.endswith(".queued")]


_STATES = ("active", "abandoned", "converted", "cleared", "completed", "suppressed")


def _print_table(
    out: TextIO,
    n: int,
    seed: int,
    ticks: int,
    faults: bool,
    counts: dict[str, int],
    figures: list[Figure],
) -> None:
    minutes, seconds = divmod(int((TICK * ticks).total_seconds()), 60)
    elapsed = f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    lines = [f"shop-events simulation: {n} shoppers, seed {seed}, {elapsed} of shop time"]
    if faults:
        lines.append(
            "  the receiver was told to fail now and then (500/503/429), refuse one request"
            " (400) and reject the API key for a minute"
        )
    types = types_in(counts)
    labels = [f.label for f in figures]
    width = max(len(t) for t in [*types, *labels, "registrations", "all events"])

    def row(label: str, values: Iterable[object]) -> str:
        return f"  {label:<{width}}" + "".join(f"{v!s:>11}" for v in values)

    lines.append("")
    lines.append(row("activity", ("rows", *_STATES)))
    for name, _ in ACTIVITY:
        lines.append(row(name, (counts[name], *(counts[f"{name}.{s}"] for s in _STATES))))
    lines.append("")
    lines.append(row("event type", MEASURES))
    for kind in types:
        lines.append(row(kind, (counts[f"{kind}.{m}"] for m in MEASURES)))
    totals = ("enqueued", "delivered", "superseded", "dead", "pending", "lost")
    lines.append(row("all events", (counts[k] for k in totals)))
    lines.append("")
    lines.append(
        f"  {counts['requests']} requests answered, {counts['failed']} of them not 2xx"
        f" (retried, or refused: {counts['refused']} dead letters);"
        f" {counts['duplicates']} duplicates received (at-least-once)"
    )
    balance = counts["delivered"] + counts["dead"] + counts["superseded"] + counts["pending"]
    verdict = "every event accounted for" if counts["lost"] == 0 else "EVENTS LOST"
    lines.append(
        f"  {counts['enqueued']} enqueued = {balance} delivered + dead + superseded + pending;"
        f" lost {counts['lost']} (sent but never received, or unexplained): {verdict}"
    )
    lines.append("")
    lines.append(row("recovery", ("report", "seen", "")))
    for figure in figures:
        check = "" if figure.agrees else "DIFFERS"
        lines.append(row(figure.label, (figure.report, figure.seen, check)))
    steps = ", ".join(CART_STEPS)
    lines.append(
        f"  abandoned carts reminded after {steps} with recovery links; report: the database's"
        " (tracker.recovery_report); seen: counted from the receiver's log and the"
        f" {counts['recovery.links_opened']} links the shoppers opened"
    )
    disagree = [f.label.strip() for f in figures if not f.agrees]
    lines.append(
        "  every recovery figure agrees"
        if not disagree
        else "  RECOVERY FIGURES DIFFER: " + ", ".join(disagree)
    )
    _write(out, lines)


def _write(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        print(line, file=out)

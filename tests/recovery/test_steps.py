"""Reminders in steps: each step comes due after the last activity, is checked again at send
time, and no later step follows an order, a cleared cart or an opt-out. The clock is frozen and
moved; the receiver is a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Settings, Tracker
from shop_events.errors import ConfigError
from shop_events.storage.tables import carts, outbox, reminders
from shop_events.testing import Receiver
from sqlalchemy import event, select

from tests.support import RECOVERY_START as START
from tests.support import TrackerFactory, scan_and_dispatch

ANN = "ann@example.com"
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
STEPS = {"steps": ["1h", "24h", "72h"]}


def cart(tracker: Tracker, *prices: int, cart_id: str = "cart-1", email: str = ANN) -> None:
    tracker.cart_updated(
        cart_id,
        email=email,
        items=[Item(name=f"P{p}", price=p) for p in prices],
        currency="EUR",
        restore_url="https://shop.example/cart",
    )


def steps_received(receiver: Receiver, event_type: str = "abandoned_cart") -> list[str]:
    return [Receiver.params(e)["step"] for e in receiver.events if e["eventTypeKey"] == event_type]


def at(clock: FrozenDateTimeFactory, delta: timedelta) -> None:
    clock.move_to(START + delta)


def step_one_sent(tracker: Tracker, clock: FrozenDateTimeFactory) -> None:
    """A cart of 10 left alone for an hour: its first step goes out."""
    cart(tracker, 10)
    at(clock, HOUR)
    assert scan_and_dispatch(tracker) == 1


def test_three_steps_go_out_each_at_its_time_after_the_last_activity(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart=STEPS)
    cart(tracker, 10, 20)
    for due, step in ((HOUR, "1"), (24 * HOUR, "2"), (72 * HOUR, "3")):
        at(clock, due - SECOND)
        assert scan_and_dispatch(tracker) == 0, f"step {step} went out early"
        at(clock, due)
        assert scan_and_dispatch(tracker) == 1
        assert steps_received(receiver)[-1] == step
    at(clock, 30 * 24 * HOUR)
    assert scan_and_dispatch(tracker) == 0
    assert steps_received(receiver) == ["1", "2", "3"]
    with tracker.engine.connect() as conn:
        keys = [r.dedupe_key for r in conn.execute(select(outbox).order_by(outbox.c.id))]
        ledger = conn.execute(select(reminders).order_by(reminders.c.step)).all()
    assert keys == [f"abandoned_cart:cart-1:1:{n}" for n in (1, 2, 3)]
    assert [(r.step, r.delivered_at) for r in ledger] == [
        (1, START + HOUR),
        (2, START + 24 * HOUR),
        (3, START + 72 * HOUR),
    ]
    # every step carries the same cart
    totals = {Receiver.params(e)["total"] for e in receiver.events}
    assert totals == {"30"}


def test_an_order_after_step_one_stops_steps_two_and_three(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart=STEPS)
    step_one_sent(tracker, clock)
    at(clock, 2 * HOUR)
    tracker.order_placed("order-1", email=ANN, items=[Item(name="P10", price=10)], cart_id="cart-1")
    for later in (24 * HOUR, 72 * HOUR, 200 * HOUR):
        at(clock, later)
        scan_and_dispatch(tracker)
    assert steps_received(receiver) == ["1"]
    assert [e["eventTypeKey"] for e in receiver.events] == ["abandoned_cart", "orderCreated"]


def test_an_order_while_step_two_waits_to_be_sent_supersedes_it(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart=STEPS)
    step_one_sent(tracker, clock)
    at(clock, 24 * HOUR)
    assert tracker.scan().abandoned == 1  # step 2 queued, not yet sent
    tracker.order_placed("order-1", email=ANN, items=[Item(name="P10", price=10)])
    result = tracker.dispatch()
    assert (result.sent, result.superseded) == (1, 1)  # the order's event; step 2 dropped
    at(clock, 72 * HOUR)
    assert scan_and_dispatch(tracker) == 0
    assert steps_received(receiver) == ["1"]


def test_a_cleared_cart_gets_no_later_step(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart=STEPS)
    step_one_sent(tracker, clock)
    tracker.cart_cleared("cart-1")
    at(clock, 100 * HOUR)
    scan_and_dispatch(tracker)
    assert steps_received(receiver) == ["1"]


def test_an_opt_out_after_step_one_stops_the_sequence(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart=STEPS)
    step_one_sent(tracker, clock)
    tracker.opted_out(ANN)
    at(clock, 100 * HOUR)
    scan_and_dispatch(tracker)
    assert steps_received(receiver) == ["1"]
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts)).one()
    assert (row.state, row.skip_reason, row.step) == ("suppressed", "opted_out", 2)


def test_a_cart_changed_after_step_one_starts_again_at_step_one_as_its_new_version(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart={**STEPS, "contact_interval": "0s"})
    step_one_sent(tracker, clock)
    at(clock, 5 * HOUR)
    cart(tracker, 10, 20)  # a new version: the sequence starts over from this activity
    at(clock, 5 * HOUR + HOUR)
    assert scan_and_dispatch(tracker) == 1
    at(clock, 5 * HOUR + 24 * HOUR - SECOND)
    # step 2 counts from the change, not from the first activity
    assert scan_and_dispatch(tracker) == 0
    at(clock, 5 * HOUR + 24 * HOUR)
    assert scan_and_dispatch(tracker) == 1
    assert steps_received(receiver) == ["1", "1", "2"]
    assert [Receiver.params(e)["total"] for e in receiver.events] == ["10", "30", "30"]
    with tracker.engine.connect() as conn:
        keys = [r.dedupe_key for r in conn.execute(select(outbox).order_by(outbox.c.id))]
    assert keys == [
        "abandoned_cart:cart-1:1:1",
        "abandoned_cart:cart-1:2:1",
        "abandoned_cart:cart-1:2:2",
    ]


def test_a_change_after_step_one_still_queued_supersedes_it(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart=STEPS)
    cart(tracker, 10)
    at(clock, HOUR)
    assert tracker.scan().abandoned == 1
    cart(tracker, 10, 20)
    result = tracker.dispatch()
    assert (result.sent, result.superseded) == (0, 1)


def test_the_contact_interval_limits_sequences_not_steps(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(abandoned_cart={"steps": ["1h", "2h"], "contact_interval": "24h"})
    cart(tracker, 10)
    cart(tracker, 5, cart_id="cart-2")  # a second cart of the same contact: a second sequence
    at(clock, HOUR)
    assert scan_and_dispatch(tracker) == 1
    at(clock, 2 * HOUR)
    assert scan_and_dispatch(tracker) == 1
    assert steps_received(receiver) == ["1", "2"]
    with tracker.engine.connect() as conn:
        states = dict(conn.execute(select(carts.c.cart_id, carts.c.skip_reason)).all())
    assert list(states.values()).count("capped") == 1


def test_after_is_one_step_with_its_number(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    step_one_sent(tracker, clock)
    at(clock, 1000 * HOUR)
    assert scan_and_dispatch(tracker) == 0
    assert steps_received(receiver) == ["1"]


def test_browse_and_registration_take_the_same_steps(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(
        abandoned_browse={"steps": ["1h", "3h"]},
        unfinished_registration={"steps": ["2h", "4h"]},
    )
    tracker.product_viewed(email=ANN, item=Item(name="Lamp", price=5, url="https://shop.example/l"))
    tracker.registration_started("bob@example.com", params={"source": "footer"})
    for hours in (1, 2, 3, 4, 50):
        at(clock, hours * HOUR)
        scan_and_dispatch(tracker)
    assert steps_received(receiver, "abandoned_browse") == ["1", "2"]
    assert steps_received(receiver, "unfinished_registration") == ["1", "2"]
    tracker.registration_completed("bob@example.com")


def test_a_completed_registration_gets_no_later_step(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(unfinished_registration={"steps": ["2h", "4h"]})
    tracker.registration_started("bob@example.com")
    at(clock, 2 * HOUR)
    assert scan_and_dispatch(tracker) == 1
    tracker.registration_completed("bob@example.com")
    at(clock, 10 * HOUR)
    assert scan_and_dispatch(tracker) == 0
    assert steps_received(receiver, "unfinished_registration") == ["1"]


def test_steps_and_after_together_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({"abandoned_cart": {"steps": ["1h", "2h"], "after": "30m"}})
    assert str(caught.value).startswith("abandoned_cart.steps, abandoned_cart.after:")
    given = Settings.load({"abandoned_cart": {"steps": ["1h", "2h"]}})
    with pytest.raises(ConfigError, match=r"abandoned_cart\.steps, abandoned_cart\.after"):
        given.with_keys({"SHOP_EVENTS_ABANDONED_CART_AFTER": "2h"})


@pytest.mark.parametrize(
    ("steps", "rule"),
    [
        (["1h", "1h"], "step 2 must be longer than the step before it"),
        (["2h", "1h"], "step 2 must be longer than the step before it"),
        (["0s", "1h"], "step 1 must be longer than 0s"),
        (["soon"], "'soon' is not a duration"),
        ([f"{n}h" for n in range(1, 13)], "at most 10 steps"),
    ],
)
def test_steps_that_do_not_grow_are_refused(steps: list[str], rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"^unfinished_registration\.steps: .*{rule}"):
        Settings.load({"unfinished_registration": {"steps": steps}})


def test_steps_from_the_environment_are_comma_separated() -> None:
    settings = Settings.load({}, env={"SHOP_EVENTS_ABANDONED_BROWSE_STEPS": "1h, 1d,3d"})
    assert settings.abandoned_browse.delays == (HOUR, 24 * HOUR, 72 * HOUR)
    # a setting changed later keeps the steps, and does not count as `after` written
    changed = settings.override(abandoned_browse={"contact_interval": "1h"})
    assert changed.abandoned_browse.delays == (HOUR, 24 * HOUR, 72 * HOUR)


def test_after_a_pause_in_delivery_only_the_newest_step_goes_out(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    """Steps queued while nothing could be sent do not reach the shopper all at once."""
    tracker = make_tracker(abandoned_cart=STEPS)
    cart(tracker, 10)
    for due in (HOUR, 24 * HOUR, 72 * HOUR):
        at(clock, due)
        assert tracker.scan().abandoned == 1  # queued; delivery is paused meanwhile
    sent = superseded = 0
    for _ in range(5):  # one row of a subject at a time: the steps go in order
        result = tracker.dispatch()
        sent, superseded = sent + result.sent, superseded + result.superseded
    assert (sent, superseded) == (1, 2)
    assert steps_received(receiver) == ["3"]
    with tracker.engine.connect() as conn:
        errors = [r.last_error for r in conn.execute(select(outbox).order_by(outbox.c.id))]
    assert errors[:2] == ["a later reminder (step 3) of the cart replaced it"] * 2


def test_a_later_step_is_found_through_the_index_of_abandoned_rows(tmp_path: Path) -> None:
    """Finished sequences pile up as abandoned rows until retention: a later step's scan must
    not read them all while it holds SQLite's write lock."""
    settings = Settings.load(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'plan.db'}"},
            "scheduler": {"enabled": False},
            "abandoned_cart": STEPS,
        }
    )
    tracker = Tracker(settings)
    tracker.migrate()
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "shop_events_carts" in statement and "step" in statement:
            statements.append((statement, parameters))

    event.listen(tracker.engine, "before_cursor_execute", seen)
    tracker.scan()
    event.remove(tracker.engine, "before_cursor_execute", seen)
    later = [(s, p) for s, p in statements if "'abandoned'" in s]
    assert len(later) == 2  # steps 2 and 3
    with tracker.engine.connect() as conn:
        for statement, parameters in later:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            assert "ix_shop_events_carts_next_step" in " ".join(str(row) for row in plan)
    tracker.engine.dispose()


def test_a_last_step_that_retention_would_delete_first_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^abandoned_cart\.steps: the last step \(31d\)"):
        Settings.load({"abandoned_cart": {"steps": ["1h", "31d"]}})
    with pytest.raises(ConfigError, match=r"retention\.days \(2\) deletes the registration"):
        Settings.load(
            {"unfinished_registration": {"steps": ["1h", "3d"]}, "retention": {"days": 2}}
        )
    longer = Settings.load({"abandoned_cart": {"steps": ["1h", "31d"]}, "retention": {"days": 60}})
    assert longer.abandoned_cart.delays[-1] == timedelta(days=31)

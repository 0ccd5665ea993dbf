"""Coupons in reminders: the shop's function gives a code for the coupon steps; a failing or
wrong function never holds a reminder back, and its failures are counted where status shows
them. The clock is frozen and moved; the receiver is a real HTTP server."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Settings, Tracker
from shop_events.errors import ConfigError
from shop_events.storage.tables import reminders
from shop_events.testing import Receiver
from sqlalchemy import select

from tests.support import RECOVERY_START as START
from tests.support import SettingsFactory

HOUR = timedelta(hours=1)
STEPS = {"steps": ["1h", "24h"]}
CALLS: list[tuple[str, str, int]] = []


def shop_coupon(cart_id: str, email: str, step: int) -> str | None:
    """The shop's coupon function as ``recovery.coupon`` names it."""
    CALLS.append((cart_id, email, step))
    return f"BACK-{cart_id.upper()}-{step}"


@pytest.fixture(autouse=True)
def no_calls_yet() -> None:
    """Each test sees only its own calls of :func:`shop_coupon`."""
    CALLS.clear()


def remind_twice(tracker: Tracker, clock: FrozenDateTimeFactory) -> None:
    tracker.migrate()
    tracker.cart_updated("cart-1", email="ann@example.com", items=[Item(name="Lamp", price=40)])
    tracker.product_viewed(email="bob@example.com", item=Item(name="Vase", price=5))
    for hours in (1, 24):
        clock.move_to(START + hours * HOUR)
        tracker.scan()
        tracker.dispatch()


def coupons_sent(receiver: Receiver) -> list[tuple[str, str | None]]:
    return [
        (Receiver.params(e)["step"], Receiver.params(e).get("coupon"))
        for e in receiver.events
        if e["eventTypeKey"] == "abandoned_cart"
    ]


def test_the_coupon_steps_carry_the_code_the_shops_function_gives(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    settings = make_settings(
        abandoned_cart=STEPS,
        abandoned_browse=STEPS,
        recovery={"coupon": f"{__name__}:shop_coupon", "coupon_steps": [2]},
    )
    tracker = Tracker(settings)
    remind_twice(tracker, clock)
    assert coupons_sent(receiver) == [("1", None), ("2", "BACK-CART-1-2")]
    assert CALLS == [("cart-1", "ann@example.com", 2)]  # carts only, coupon steps only
    browse = [e for e in receiver.events if e["eventTypeKey"] == "abandoned_browse"]
    assert len(browse) == 2 and all("coupon" not in Receiver.params(e) for e in browse)
    with tracker.engine.connect() as conn:
        kept = conn.execute(
            select(reminders.c.step, reminders.c.coupon)
            .where(reminders.c.flow == "cart")
            .order_by(reminders.c.step)
        ).all()
    assert [tuple(r) for r in kept] == [(1, None), (2, "BACK-CART-1-2")]
    tracker.engine.dispose()


@pytest.mark.parametrize(
    ("function", "error"),
    [
        (lambda cart, email, step: 1 / 0, "ZeroDivisionError: division by zero"),
        (lambda cart, email, step: 42, "returned int, not text"),
        (lambda cart, email, step: "X" * 101, "at most 100 characters"),
        (lambda cart, email, step: "OK\x00", "printable"),
    ],
)
def test_a_failing_coupon_function_never_holds_the_reminder_back_and_is_counted(
    make_settings: SettingsFactory,
    receiver: Receiver,
    clock: FrozenDateTimeFactory,
    function: Any,
    error: str,
) -> None:
    tracker = Tracker(
        make_settings(abandoned_cart=STEPS, recovery={"coupon_steps": [1, 2]}), coupon=function
    )
    remind_twice(tracker, clock)
    assert coupons_sent(receiver) == [("1", None), ("2", None)]
    health = tracker.health()
    [problem] = [e for e in health.capture_errors if e.mapping == "recovery"]
    assert (problem.field, problem.count) == ("coupon", 2)
    assert error in problem.last_error
    assert problem.last_subject == "the cart cart-1 step 2"
    tracker.engine.dispose()


def test_no_code_is_no_coupon_and_no_error(
    make_settings: SettingsFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = Tracker(
        make_settings(abandoned_cart=STEPS, recovery={"coupon_steps": [2]}),
        coupon=lambda cart, email, step: None,
    )
    remind_twice(tracker, clock)
    assert coupons_sent(receiver) == [("1", None), ("2", None)]
    assert tracker.health().capture_errors == ()
    tracker.engine.dispose()


@pytest.mark.parametrize(
    ("recovery", "message"),
    [
        ({"coupon": "not a reference"}, r"^recovery\.coupon: 'not a reference' is not"),
        ({"coupon_steps": [0]}, r"^recovery\.coupon_steps: steps are numbered from 1"),
    ],
)
def test_a_wrong_coupon_setting_is_refused_naming_it(
    recovery: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load({"recovery": recovery})


def test_a_coupon_function_that_cannot_be_imported_is_refused_at_start(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(recovery={"coupon": "tests.nowhere:coupon", "coupon_steps": [1]})
    with pytest.raises(ConfigError, match=r"^recovery\.coupon: cannot import 'tests\.nowhere"):
        Tracker(settings)

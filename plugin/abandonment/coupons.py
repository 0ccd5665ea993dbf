"""Coupons in reminders: the shop's function gives a code for the steps that carry one.

``recovery.coupon = "module:function"`` (or ``ShopEvents(app, coupon=fn)``) is called as
``fn(cart_id, email, step)`` when a cart's reminder step in ``recovery.coupon_steps`` is queued;
its code goes as the ``coupon`` param. A function that fails, or returns something that is not a
code, never holds the reminder back: it goes without a coupon, and the failure is counted in
the capture errors (mapping ``recovery``, field ``coupon``) that ``shop-events status`` lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection

from ..config import RecoverySettings
from ..config.references import import_callable
from ..storage import capture_errors
from ..storage.capture_errors import CaptureError
from ..storage.enums import Subject
from .flows import Flow

log = logging.getLogger(__name__)

Coupon = Callable[[str, str, int], "str | None"]
"""``fn(cart_id, email, step)``: a coupon code for this reminder, or None for none."""
CODE_MAX = 100
"""The longest code kept (the length of ``shop_events_reminders.coupon``)."""
MAPPING = "recovery"
FIELD = "coupon"


class Coupons:
    """The coupon function and the steps it serves, and the failures of one scan batch."""

    def __init__(self, recovery: RecoverySettings, given: Coupon | None = None) -> None:
        self._steps = frozenset(recovery.coupon_steps)
        if given is None and recovery.coupon:
            given = import_callable(recovery.coupon, "recovery.coupon")
        self._function = given
        self._failures: list[CaptureError] = []
        if given is not None and not self._steps:
            log.warning("recovery.coupon is set but recovery.coupon_steps is empty: no coupons")

    def code(self, flow: Flow, cart_id: str, email: str, step: int, now: datetime) -> str | None:
        """The coupon of a cart's reminder ``step``, or None (no function, not a coupon step,
        no code, or the function failed: counted)."""
        if self._function is None or flow.subject is not Subject.CART or step not in self._steps:
            return None
        try:
            value = self._function(cart_id, email, step)
        except Exception as exc:  # the shop's code: the reminder goes without a coupon
            self._failed(cart_id, step, now, f"{type(exc).__name__}: {exc}")
            return None
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self._failed(cart_id, step, now, f"returned {type(value).__name__}, not text")
            return None
        code = value.strip()
        if len(code) > CODE_MAX or not code.isprintable():
            self._failed(
                cart_id, step, now, f"a code must be printable and at most {CODE_MAX} characters"
            )
            return None
        return code

    def _failed(self, cart_id: str, step: int, now: datetime, message: str) -> None:
        log.warning(
            "recovery.coupon for cart %r step %d: %s; the reminder goes without a coupon",
            cart_id,
            step,
            message,
        )
        self._failures.append(
            CaptureError(
                mapping=MAPPING,
                field=FIELD,
                count=1,
                first_at=now,
                last_at=now,
                last_subject=f"the cart {cart_id} step {step}",
                last_error=message,
            )
        )

    def record_failures(self, conn: Connection) -> None:
        """Count the failures met since the last call in the capture errors, in ``conn``'s
        transaction."""
        if self._failures:
            capture_errors.record(conn, self._failures)
            self._failures = []

"""The recovery report: per flow, sequences started, reminders delivered per step, clicks,
orders recovered and their revenue per currency, the recovery rate, and a daily series.

Read from the reminders and recoveries tables (kept for ``recovery.keep``), so that the report
does not depend on the outbox's retention. Days are UTC dates.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from ..storage import recoveries, reminders
from ..storage.enums import Subject

FLOWS = {
    Subject.CART.value: "abandoned_cart",
    Subject.BROWSE.value: "abandoned_browse",
    Subject.REGISTRATION.value: "unfinished_registration",
}
"""Each flow's subject and its name in the report (its settings section)."""
NO_CURRENCY = "XXX"
"""Revenue of orders placed without a currency (ISO 4217's code for none)."""
DEFAULT_PERIOD = timedelta(days=30)


@dataclasses.dataclass
class Day:
    """One UTC day of a flow."""

    day: date
    abandoned: int = 0
    reminders_delivered: int = 0
    clicks: int = 0
    recovered_orders: int = 0
    recovered_revenue: dict[str, Decimal] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The day with decimals as strings."""
        return {
            "date": self.day.isoformat(),
            "abandoned": self.abandoned,
            "reminders_delivered": self.reminders_delivered,
            "clicks": self.clicks,
            "recovered_orders": self.recovered_orders,
            "recovered_revenue": _texts(self.recovered_revenue),
        }


@dataclasses.dataclass
class FlowReport:
    """What one flow's reminders did in the period."""

    name: str
    abandoned: int = 0
    """Sequences started: first reminders queued."""
    reminders_delivered: dict[int, int] = dataclasses.field(default_factory=dict)
    """By step."""
    clicks: int = 0
    """Reminders whose link was opened (a link opened several times is one click)."""
    clicks_by_step: dict[int, int] = dataclasses.field(default_factory=dict)
    recovered_orders: int = 0
    recovered_by_step: dict[int, int] = dataclasses.field(default_factory=dict)
    recovered_clicked: int = 0
    """Of the recovered orders, those whose sequence's link was opened before the order."""
    recovered_revenue: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    """By currency."""
    daily: list[Day] = dataclasses.field(default_factory=list)

    @property
    def recovery_rate(self) -> float:
        """Recovered orders ÷ sequences started, from 0 to 1 (0 when none started)."""
        if not self.abandoned:
            return 0.0
        return round(min(1.0, self.recovered_orders / self.abandoned), 4)

    def as_json(self) -> dict[str, Any]:
        """The flow as ``shop-events report --json`` prints it."""
        return {
            "abandoned": self.abandoned,
            "reminders_delivered": {str(k): v for k, v in sorted(self.reminders_delivered.items())},
            "clicks": self.clicks,
            "recovered_orders": self.recovered_orders,
            "recovered_revenue": _texts(self.recovered_revenue),
            "recovery_rate": self.recovery_rate,
            "daily": [day.as_json() for day in self.daily],
        }


@dataclasses.dataclass
class RecoveryReport:
    """The report of every flow over ``[since, until)``."""

    since: datetime
    until: datetime
    flows: dict[str, FlowReport]

    @property
    def cart(self) -> FlowReport:
        """The abandoned-cart flow's report."""
        return self.flows["abandoned_cart"]

    def as_json(self) -> dict[str, Any]:
        """The abandoned-cart flow's keys at the top, and every flow under ``flows``."""
        return {
            **self.cart.as_json(),
            "flows": {name: flow.as_json() for name, flow in self.flows.items()},
        }


def _texts(amounts: dict[str, Decimal]) -> dict[str, str]:
    return {currency: str(amount) for currency, amount in sorted(amounts.items())}


def recovery_report(engine: Engine, since: datetime, until: datetime) -> RecoveryReport:
    """Count what the reminders did in ``[since, until)``."""
    if until <= since:
        raise ValueError(f"the period must end after it starts ({since} … {until})")
    with engine.connect() as conn:
        queued = reminders.queued_by_day(conn, since, until)
        delivered = reminders.delivered_by_day(conn, since, until)
        clicked = reminders.clicked_by_day(conn, since, until)
        recovered = recoveries.between(conn, since, until)
    days = _days(since, until)
    flows = {name: FlowReport(name) for name in FLOWS.values()}
    series = {name: {d: Day(d) for d in days} for name in flows}

    def at(name: str, day: date) -> Day:
        return series[name].setdefault(day, Day(day))

    for tally in queued:
        if tally.flow in FLOWS and tally.step == 1:
            name = FLOWS[tally.flow]
            flows[name].abandoned += tally.count
            at(name, tally.day).abandoned += tally.count
    for tally in delivered:
        if tally.flow in FLOWS:
            name = FLOWS[tally.flow]
            steps = flows[name].reminders_delivered
            steps[tally.step] = steps.get(tally.step, 0) + tally.count
            at(name, tally.day).reminders_delivered += tally.count
    for tally in clicked:
        if tally.flow in FLOWS:
            name = FLOWS[tally.flow]
            flows[name].clicks += tally.count
            steps = flows[name].clicks_by_step
            steps[tally.step] = steps.get(tally.step, 0) + tally.count
            at(name, tally.day).clicks += tally.count
    for order in recovered:
        if order.flow not in FLOWS:
            continue
        name = FLOWS[order.flow]
        flow = flows[name]
        currency = order.currency or NO_CURRENCY
        flow.recovered_orders += 1
        flow.recovered_clicked += order.clicked
        flow.recovered_by_step[order.step] = flow.recovered_by_step.get(order.step, 0) + 1
        _add(flow.recovered_revenue, currency, order.revenue)
        day = at(name, order.ordered_at.date())
        day.recovered_orders += 1
        _add(day.recovered_revenue, currency, order.revenue)
    for name, flow in flows.items():
        flow.daily = [series[name][d] for d in sorted(series[name])]
    return RecoveryReport(since=since, until=until, flows=flows)


def _days(since: datetime, until: datetime) -> list[date]:
    """Every UTC day the period touches."""
    first, last = since.date(), (until - timedelta(microseconds=1)).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _add(amounts: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    amounts[currency] = amounts.get(currency, Decimal(0)) + amount

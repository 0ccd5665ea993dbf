"""The recovery operator page, ``/shop-events/admin/recovery``: what the reminders brought back.

For the last ``?days=N`` whole UTC days, today included (1 to 400, default 30), and one flow
(``?flow=abandoned_cart|abandoned_browse|unfinished_registration``, default the abandoned
cart): reminders delivered, clicks and recovered orders per day; recovered revenue per day in
each currency; the funnel per step (delivered → clicked → recovered); the same numbers in
tables, with every flow side by side. A value the page cannot use is replaced by its default,
and the page says so: a bad query string never fails the page.

Guarded like the other operator pages; the numbers are :meth:`Tracker.recovery_report`'s.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from flask import request

from ...config import FlowSettings, format_duration
from ...recovery.report import FLOWS, Day, FlowReport, RecoveryReport
from . import charts
from .admin import operator_page, render_page
from .blueprint import blueprint, web_state

DEFAULT_DAYS = 30
MAX_DAYS = 400
FLOW_NAMES = tuple(FLOWS.values())
DEFAULT_FLOW = FLOW_NAMES[0]


def flow_label(name: str) -> str:
    """``abandoned_cart`` → ``Abandoned cart``."""
    return name.replace("_", " ").capitalize()


def _days(text: str | None, notes: list[str]) -> int:
    """The ``days`` asked for, or the default with a note saying why."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_DAYS
    if text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_DAYS:
        return int(text)
    notes.append(
        f"days: {text[:80]!r} is not a whole number from 1 to {MAX_DAYS}; "
        f"showing the last {DEFAULT_DAYS} days"
    )
    return DEFAULT_DAYS


def _flow(text: str | None, notes: list[str]) -> str:
    """The ``flow`` asked for, or the default with a note saying why."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_FLOW
    if text in FLOW_NAMES:
        return text
    notes.append(
        f"flow: {text[:80]!r} is not one of {', '.join(FLOW_NAMES)}; showing {DEFAULT_FLOW}"
    )
    return DEFAULT_FLOW


def _steps(flow: FlowReport, section: FlowSettings) -> list[int]:
    """The steps configured, and any other step that has numbers (from an earlier setting)."""
    seen = {*flow.reminders_delivered, *flow.clicks_by_step, *flow.recovered_by_step}
    return sorted(seen | set(range(1, len(section.delays) + 1)))


def _step_name(step: int, section: FlowSettings) -> str:
    delays = section.delays
    if step <= len(delays):
        return f"Step {step} · {format_duration(delays[step - 1])}"
    return f"Step {step}"


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def _charts(
    flow: FlowReport, section: FlowSettings, days: list[date]
) -> tuple[charts.Chart, list[charts.Chart], charts.Chart]:
    """The day-by-day activity, the revenue per day in each currency, and the funnel."""
    day_axis = [charts.Category(label=f"{d:%b} {d.day}", name=d.isoformat()) for d in days]
    series = {d.day: d for d in flow.daily}
    daily = [series.get(d) or Day(d) for d in days]
    activity = charts.bar_chart(
        "chart-activity",
        "Reminders delivered, clicks and recovered orders per day",
        day_axis,
        [
            charts.Series(
                "delivered",
                "Reminders delivered",
                charts.DELIVERED,
                [d.reminders_delivered for d in daily],
            ),
            charts.Series("clicks", "Clicks", charts.CLICKED, [d.clicks for d in daily]),
            charts.Series(
                "recovered",
                "Recovered orders",
                charts.RECOVERED,
                [d.recovered_orders for d in daily],
            ),
        ],
        value_axis="Count",
        category_axis="Day (UTC)",
    )
    revenue = [
        charts.bar_chart(
            f"chart-revenue-{n}",
            f"Recovered revenue per day, {currency}",
            day_axis,
            [
                charts.Series(
                    "revenue",
                    f"Recovered revenue ({currency})",
                    charts.REVENUE,
                    [d.recovered_revenue.get(currency, Decimal(0)) for d in daily],
                )
            ],
            value_axis=currency,
            category_axis="Day (UTC)",
            fmt=charts.amount,
            whole=False,
        )
        for n, currency in enumerate(sorted(flow.recovered_revenue), 1)
    ]
    if not revenue:
        revenue.append(
            charts.bar_chart(
                "chart-revenue-1",
                "Recovered revenue per day",
                day_axis,
                [charts.Series("revenue", "Recovered revenue", charts.REVENUE, [0] * len(days))],
                value_axis="Revenue",
                category_axis="Day (UTC)",
            )
        )
    steps = _steps(flow, section)
    funnel = charts.bar_chart(
        "chart-funnel",
        "Funnel per step: delivered → clicked → recovered",
        [charts.Category(label=_step_name(s, section), name=_step_name(s, section)) for s in steps],
        [
            charts.Series(
                "delivered",
                "Delivered",
                charts.DELIVERED,
                [flow.reminders_delivered.get(s, 0) for s in steps],
            ),
            charts.Series(
                "clicks", "Clicked", charts.CLICKED, [flow.clicks_by_step.get(s, 0) for s in steps]
            ),
            charts.Series(
                "recovered",
                "Recovered orders",
                charts.RECOVERED,
                [flow.recovered_by_step.get(s, 0) for s in steps],
            ),
        ],
        value_axis="Reminders",
        category_axis="Step (delay after the last activity)",
    )
    return activity, revenue, funnel


def _table(report: RecoveryReport, sections: dict[str, FlowSettings]) -> dict[str, Any]:
    """Every flow's totals: the steps and currencies that are columns, and a row per flow."""
    steps = sorted({s for name, f in report.flows.items() for s in _steps(f, sections[name])})
    currencies = sorted({c for f in report.flows.values() for c in f.recovered_revenue})
    rows = [
        {
            "name": name,
            "label": flow_label(name),
            "abandoned": flow.abandoned,
            "delivered": [flow.reminders_delivered.get(s, 0) for s in steps],
            "clicks": flow.clicks,
            "recovered_orders": flow.recovered_orders,
            "recovered_clicked": flow.recovered_clicked,
            "revenue": [str(flow.recovered_revenue.get(c, Decimal(0))) for c in currencies],
            "rate": f"{flow.recovery_rate:.2%}",
        }
        for name, flow in report.flows.items()
    ]
    return {"steps": steps, "currencies": currencies, "rows": rows}


def _funnel_rows(flow: FlowReport, section: FlowSettings) -> list[dict[str, Any]]:
    """Per step: delivered, clicked, recovered, and the shares of the delivered."""
    rows: list[dict[str, Any]] = []
    for step in _steps(flow, section):
        delivered = flow.reminders_delivered.get(step, 0)
        clicks = flow.clicks_by_step.get(step, 0)
        recovered = flow.recovered_by_step.get(step, 0)
        rows.append(
            {
                "name": _step_name(step, section),
                "delivered": delivered,
                "clicks": clicks,
                "recovered": recovered,
                "click_rate": _percent(clicks, delivered),
                "order_rate": _percent(recovered, delivered),
            }
        )
    return rows


@blueprint.get("/admin/recovery")
@operator_page
def admin_recovery() -> str:
    """Reminders, clicks, recovered orders and revenue per day, per step and per flow."""
    tracker = web_state().tracker
    settings = tracker.settings
    notes: list[str] = []
    days = _days(request.args.get("days"), notes)
    name = _flow(request.args.get("flow"), notes)
    today = tracker.clock().astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(), UTC)
    until = datetime.combine(today + timedelta(days=1), time(), UTC)
    report = tracker.recovery_report(since=since, until=until)
    sections: dict[str, FlowSettings] = {n: getattr(settings, n) for n in FLOW_NAMES}
    flow, section = report.flows[name], sections[name]
    activity, revenue, funnel = _charts(
        flow, section, [first + timedelta(days=n) for n in range(days)]
    )
    return render_page(
        "recovery.html",
        days=days,
        first=first,
        last=today,
        notes=notes,
        flow_name=name,
        flow=flow,
        flow_title=flow_label(name),
        flow_names=[(n, flow_label(n)) for n in FLOW_NAMES],
        flow_enabled=section.enabled,
        currencies=sorted(flow.recovered_revenue),
        links_on=settings.recovery.links,
        kept_days=settings.recovery.keep.days,
        max_days=MAX_DAYS,
        activity=activity,
        revenue=revenue,
        funnel=funnel,
        funnel_rows=_funnel_rows(flow, section),
        daily=list(reversed(flow.daily)),
        table=_table(report, sections),
        window=format_duration(settings.recovery.attribution_window),
    )

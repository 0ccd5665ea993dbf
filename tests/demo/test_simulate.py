"""The simulation's recovery section: carts reminded in three steps with recovery links, shoppers
who open them and order, and the database's report beside the same figures counted from the
receiver's log and the links the shoppers opened."""

from __future__ import annotations

import dataclasses
import io
from decimal import Decimal

import pytest
from shop_events.demo import simulate as simulation
from shop_events.demo.simulate import CART_STEPS, PROFILES, Links, Shopper, simulate
from shop_events.tracker import Tracker

STEPS = range(1, len(CART_STEPS) + 1)


def figures_of(counts: dict[str, int]) -> list[str]:
    """The recovery figures' keys (without their ``.seen`` twins)."""
    return [
        key.removeprefix("recovery.")
        for key in counts
        if key.startswith("recovery.") and f"{key}.seen" in counts
    ]


def test_the_reports_recovery_figures_equal_those_counted_from_the_receiver_and_the_links() -> None:
    out = io.StringIO()
    counts = simulate(2 * len(PROFILES), seed=3, out=out)

    figures = figures_of(counts)
    assert {f"delivered.step{n}" for n in STEPS} <= set(figures)
    assert {"clicks", "recovered", "recovered_clicked", "revenue.EUR"} <= set(figures)
    for figure in figures:
        assert counts[f"recovery.{figure}"] == counts[f"recovery.{figure}.seen"], figure
    assert counts["recovery.disagree"] == 0

    # every step went out (fewer of an earlier step than queued: during the simulation's pause
    # in delivery a later step queued meanwhile replaces it, so nobody gets several at once)
    delivered = [counts[f"recovery.delivered.step{n}"] for n in STEPS]
    assert min(delivered) > 0
    # the report's reminders are the outbox's abandoned_cart rows the receiver got
    assert sum(delivered) == counts["abandoned_cart.delivered"]
    # shoppers opened links (one twice: one click) and bought, with and without a click
    assert 0 < counts["recovery.clicks"] < counts["recovery.links_opened"]
    assert 0 < counts["recovery.recovered_clicked"] < counts["recovery.recovered"]
    assert counts["recovery.revenue.EUR"] > 0
    assert counts["lost"] == 0

    text = out.getvalue()
    assert "every recovery figure agrees" in text
    assert f"{counts['recovery.links_opened']} links the shoppers opened" in text
    for n in STEPS:
        value = counts[f"recovery.delivered.step{n}"]
        assert f"\n  step {n} delivered " in text
        assert text.split(f"\n  step {n} delivered ")[1].split()[:2] == [str(value)] * 2
    revenue = text.split("\n  revenue EUR ")[1].split()[:2]
    assert revenue[0] == revenue[1]
    assert Decimal(revenue[0]) * 100 == counts["recovery.revenue.EUR"]  # counted in cents


def test_a_figure_that_differs_is_counted_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    opened_for_real = Links.open

    def open_and_misremember(self: Links, shopper: Shopper, tracker: Tracker, times: int) -> None:
        opened_for_real(self, shopper, tracker, times)
        if self.opened:  # a link the plugin never saw opened
            self.opened.append(dataclasses.replace(self.opened[-1], token="forged"))

    monkeypatch.setattr(simulation.Links, "open", open_and_misremember)
    out = io.StringIO()
    counts = simulate(len(PROFILES), seed=5, faults=False, out=out)

    assert counts["recovery.clicks.seen"] > counts["recovery.clicks"] > 0
    assert counts["recovery.disagree"] == 1
    assert "RECOVERY FIGURES DIFFER: clicks (links opened)" in out.getvalue()
    assert "every recovery figure agrees" not in out.getvalue()

"""Bar charts laid out for server-rendered SVG: the geometry here, the drawing in the template
``shop_events/charts.html``.

The operator pages keep a strict Content-Security-Policy, so a chart is inline ``<svg>`` drawn
with presentation attributes only (no script, no ``style``), and every text in it is written
by an autoescaping Jinja template. A chart is readable in a screenshot: axis titles, gridlines
with their values, a label under each category (thinned out when they would overlap), a legend
with each series' total, and the value above a bar wherever it fits. Each bar carries a
``<title>`` (the browser's tooltip), and the chart a ``<title>`` and an ``aria-label`` that
sums it up for a screen reader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, Decimal

Number = int | Decimal
Format = Callable[[Number], str]

WIDTH = 960.0
HEIGHT = 320.0
LEFT = 72.0
"""Room for the value axis: its title and the gridlines' values."""
RIGHT = 16.0
TOP = 44.0
"""Room for the legend."""
BOTTOM = 52.0
"""Room for the category labels and the category axis' title."""
FONT = 12.0
SMALL = 10.0
CHAR = 0.6
"""An average glyph's width in ems, to tell whether a text fits where it would go."""
TICKS = 4
GROUP = 0.8
"""The share of a category's slot its bars take; the rest is the gap between categories."""

INK = "#1f2933"
MUTED = "#66788a"
LINE = "#dde3ea"
DELIVERED = "#2f6fde"
CLICKED = "#d9822b"
RECOVERED = "#1a7f37"
REVENUE = "#0f766e"


@dataclasses.dataclass(frozen=True)
class Series:
    """One measure over the categories: its name, key, colour and one value per category."""

    key: str
    name: str
    color: str
    values: Sequence[Number]


@dataclasses.dataclass(frozen=True)
class Category:
    """One place on the category axis: ``label`` under it, ``name`` in tooltips."""

    label: str
    name: str


@dataclasses.dataclass(frozen=True)
class Bar:
    """A bar and, where it fits, its value above it."""

    series: str
    category: str
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str
    value: str
    label: bool
    """Whether the value is written above the bar (only where it fits in the bar's slot)."""

    @property
    def label_x(self) -> float:
        """The middle of the bar."""
        return round(self.x + self.width / 2, 1)

    @property
    def label_y(self) -> float:
        """Just above the bar."""
        return round(self.y - 4, 1)


@dataclasses.dataclass(frozen=True)
class Tick:
    """A gridline of the value axis and its value."""

    y: float
    text: str


@dataclasses.dataclass(frozen=True)
class Label:
    """A category's label under the axis."""

    x: float
    text: str


@dataclasses.dataclass(frozen=True)
class LegendEntry:
    """A series' swatch and its name with its total."""

    x: float
    color: str
    text: str


@dataclasses.dataclass(frozen=True)
class Chart:
    """Everything the template needs to draw one bar chart."""

    id: str
    title: str
    summary: str
    """One sentence for ``aria-label``: what the chart shows and the total of each series."""
    value_axis: str
    category_axis: str
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]
    legend: list[LegendEntry]
    empty: bool
    """Every value is zero: the chart says so in the plot area."""
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    top: float = TOP
    right: float = WIDTH - RIGHT
    bottom: float = HEIGHT - BOTTOM
    font: float = FONT
    small: float = SMALL
    ink: str = INK
    muted: str = MUTED
    line: str = LINE

    @property
    def middle(self) -> float:
        """The horizontal middle of the plot area."""
        return round((self.left + self.right) / 2, 1)

    @property
    def value_axis_y(self) -> float:
        """The vertical middle of the plot area, where the value axis' title turns."""
        return round((self.top + self.bottom) / 2, 1)


def count(value: Number) -> str:
    """A whole number with thousands separators: ``1,234``."""
    return f"{int(value):,}"


def amount(value: Number) -> str:
    """An amount as recorded, with thousands separators: ``1,234.50``."""
    return f"{value:,}"


def bar_chart(
    chart_id: str,
    title: str,
    categories: Sequence[Category],
    series: Sequence[Series],
    *,
    value_axis: str,
    category_axis: str,
    fmt: Format = count,
    whole: bool = True,
) -> Chart:
    """Lay out grouped bars: for each category, one bar per series, side by side.

    ``whole`` says the values are counts, so gridlines fall on whole numbers.
    """
    if any(len(s.values) != len(categories) for s in series):
        raise ValueError("every series needs one value per category")
    totals = [sum((Decimal(v) for v in s.values), Decimal(0)) for s in series]
    peak = max((v for s in series for v in s.values), default=0)
    top_value, step = scale(Decimal(peak), whole)
    plot_w, plot_h = WIDTH - RIGHT - LEFT, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(categories), 1)
    width = slot * GROUP / max(len(series), 1)
    bars: list[Bar] = []
    for c, category in enumerate(categories):
        start = LEFT + c * slot + slot * (1 - GROUP) / 2
        for s, one in enumerate(series):
            value = one.values[c]
            height = float(Decimal(value) / top_value) * plot_h
            if value and height < 1:
                height = 1.0  # a value far below the peak still shows
            text = fmt(value)
            bars.append(
                Bar(
                    series=one.key,
                    category=category.name,
                    x=round(start + s * width, 1),
                    y=round(TOP + plot_h - height, 1),
                    width=round(max(width - 1, 0.5), 1),
                    height=round(height, 1),
                    color=one.color,
                    title=f"{category.name}: {one.name} {text}",
                    value=text,
                    label=bool(value) and fits(text, SMALL, width if len(series) > 1 else slot),
                )
            )
    ticks = [
        Tick(y=round(TOP + plot_h - float(step * n / top_value) * plot_h, 1), text=fmt(step * n))
        for n in range(int(top_value / step) + 1)
    ]
    return Chart(
        id=chart_id,
        title=title,
        summary=_summary(title, categories, series, totals, fmt),
        value_axis=value_axis,
        category_axis=category_axis,
        bars=bars,
        ticks=ticks,
        labels=_labels(categories, slot),
        legend=_legend(series, totals, fmt),
        empty=not peak,
    )


def scale(peak: Decimal, whole: bool) -> tuple[Decimal, Decimal]:
    """The top of the value axis and its gridlines' step: a 1, 2 or 5 times a power of ten, at
    most :data:`TICKS` steps up to a top at or above ``peak``."""
    if peak <= 0:
        return Decimal(1), Decimal(1)
    raw = peak / TICKS
    power = Decimal(10) ** math.floor(math.log10(raw))
    step = next(power * m for m in (1, 2, 5, 10) if power * m >= raw)
    if whole:
        step = max(Decimal(1), step.to_integral_value(rounding=ROUND_CEILING))
    return step * math.ceil(peak / step), step


def fits(text: str, size: float, room: float) -> bool:
    """Whether ``text`` in a font of ``size`` is narrower than ``room``."""
    return len(text) * size * CHAR + 2 <= room


def _labels(categories: Sequence[Category], slot: float) -> list[Label]:
    """Every n-th category's label, counted back from the last one, so none overlap."""
    longest = max((len(c.label) for c in categories), default=0)
    every = max(1, math.ceil((longest * FONT * CHAR + 8) / slot))
    last = len(categories) - 1
    return [
        Label(x=round(LEFT + (i + 0.5) * slot, 1), text=c.label)
        for i, c in enumerate(categories)
        if (last - i) % every == 0
    ]


def _legend(series: Sequence[Series], totals: Sequence[Decimal], fmt: Format) -> list[LegendEntry]:
    entries: list[LegendEntry] = []
    x = LEFT
    for one, total in zip(series, totals, strict=True):
        text = f"{one.name}: {fmt(total)}"
        entries.append(LegendEntry(x=round(x, 1), color=one.color, text=text))
        x += 18 + len(text) * FONT * CHAR + 24
    return entries


def _summary(
    title: str,
    categories: Sequence[Category],
    series: Sequence[Series],
    totals: Sequence[Decimal],
    fmt: Format,
) -> str:
    span = ""
    if categories:
        first, last = categories[0].name, categories[-1].name
        span = f", {first}" if first == last else f", {first} to {last}"
    sums = "; ".join(f"{s.name} {fmt(t)}" for s, t in zip(series, totals, strict=True))
    return f"{title}{span}: {sums}."

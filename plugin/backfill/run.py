"""A backfill run: past orders page by page, each page's outbox rows and its checkpoint written
in one transaction.

A bad order never stops the run: it is left out, counted and described in the
:class:`BackfillReport` (the first :data:`SKIPPED_KEPT`, each logged), and the others go on. An
order queued by an earlier or overlapping run is not queued again (its rows' ``dedupe_key``),
and one the plugin captured live is left to its live events. Nothing else is touched: no cart
or browse is converted, no reminder superseded, no order stored for status changes, no
recovery credited.

With a ``checkpoint`` name, the last order key of each page is kept in the database with the
page's rows (``shop_events_state``): an interrupted run knows where it stopped, and a run that
resumes after it queues nothing twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from ..clock import Clock
from ..errors import ValidationError
from ..payload.validation import check_text, quoted
from ..storage import orders as placed
from ..storage import pause
from ..storage.outbox import NewEvent, enqueue_new
from .orders import (
    PastOrder,
    SkippedOrder,
    UnreadableOrder,
    check_order,
    order_id_of,
    skipped,
)
from .rows import orders_api_row, past_event_rows

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

SKIPPED_KEPT = 100
"""Skipped orders described (and logged) one by one; more are counted only."""
CHECKPOINT_PREFIX = "backfill:"
CHECKPOINT_MAX = 64 - len(CHECKPOINT_PREFIX)
"""A checkpoint's name, at most (``shop_events_state.name`` holds 64 characters)."""
Progress = Callable[["BackfillReport"], None]


@dataclasses.dataclass
class BackfillReport:
    """What a backfill run did so far (a page at a time)."""

    read: int = 0
    """Orders given, skipped ones included."""
    queued: int = 0
    """Orders queued by this run."""
    rows: int = 0
    """Outbox rows queued (an order sent as past events may have two)."""
    already: int = 0
    """Orders an earlier or overlapping run had queued: nothing new."""
    live: int = 0
    """Orders the plugin captured live when they were placed: their events went then."""
    invalid: int = 0
    """Orders skipped as invalid."""
    skipped: list[SkippedOrder] = dataclasses.field(default_factory=list)
    """The first :data:`SKIPPED_KEPT` of them, each with the field and the rule it broke."""
    checkpoint: str | None = None
    """The key of the last order written."""

    def skip(self, order: SkippedOrder) -> None:
        """Count an order left out; describe and log the first ones."""
        self.invalid += 1
        if len(self.skipped) < SKIPPED_KEPT:
            self.skipped.append(order)
            log.warning("backfill: order skipped: %s", order.error)
        elif self.invalid == SKIPPED_KEPT + 1:
            log.warning("backfill: more orders skipped; they are counted, not logged")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a run stopped: the last order key it wrote, and what the run covered."""

    after: str
    scope: str


class Backfill:
    """One backfill run: :meth:`write` a page of orders at a time.

    ``as_events`` sends them as past events instead of Orders API orders. ``checkpoint`` names
    the run's checkpoint; ``scope`` says what it covers (mode, period): an interrupted run is
    continued only by one of the same scope.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Clock,
        *,
        as_events: bool = False,
        checkpoint: str | None = None,
        scope: str = "",
    ) -> None:
        if not isinstance(as_events, bool):
            raise ValidationError("as_events", f"must be True or False, got {quoted(as_events)}")
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.as_events = as_events
        self.name = (
            None
            if checkpoint is None
            else CHECKPOINT_PREFIX + check_text(checkpoint, "checkpoint", CHECKPOINT_MAX)
        )
        self.scope = scope
        self.report = BackfillReport()

    def resume_after(self) -> str | None:
        """The last order key an interrupted run of this checkpoint wrote, or None to start at
        the beginning; a :class:`ValidationError` when that run covered another scope."""
        found = read_checkpoint(self.engine, self.name) if self.name else None
        if found is None:
            return None
        if found.scope != self.scope:
            raise ValidationError(
                "checkpoint",
                f"a backfill of {found.scope} stopped after order key {found.after}: run it "
                "again the same way to continue it, or restart",
            )
        return found.after

    def restart(self) -> None:
        """Forget this checkpoint: the run starts at the beginning (queuing nothing twice)."""
        if self.name is not None:
            with self.engine.begin() as conn:
                pause.drop_value(conn, self.name)

    def write(self, orders: Sequence[object], after: str | None = None) -> None:
        """Check a page of orders and queue the rows of the good ones, in one transaction with
        the checkpoint ``after`` (by default the id of the page's last order)."""
        now = self.clock()
        report = self.report
        ready: list[tuple[PastOrder, list[NewEvent]]] = []
        for value in orders:
            index = report.read
            report.read += 1
            try:
                if isinstance(value, UnreadableOrder):
                    raise value.error
                order = check_order(value, now)
                ready.append((order, self._rows(order)))
            except ValidationError as exc:
                report.skip(skipped(index, value, exc))
        if after is None and orders:
            after = order_id_of(orders[-1])
        with self.engine.begin() as conn:
            live = placed.statuses(conn, [o.order_id for o, _ in ready]) if self._live() else {}
            fresh = [(order, rows) for order, rows in ready if order.order_id not in live]
            report.live += len(ready) - len(fresh)
            inserted = set(enqueue_new(conn, [row for _, rows in fresh for row in rows], now))
            for _, rows in fresh:
                if any(row.dedupe_key in inserted for row in rows):
                    report.queued += 1
                else:
                    report.already += 1
            report.rows += len(inserted)
            if self.name is not None and after is not None:
                kept = json.dumps({"after": after, "scope": self.scope})
                pause.put_value(conn, self.name, kept, now)
        if after is not None:
            report.checkpoint = after

    def _rows(self, order: PastOrder) -> list[NewEvent]:
        if self.as_events:
            return past_event_rows(order, self.settings)
        return [orders_api_row(order)]

    def _live(self) -> bool:
        """Whether an order captured live already sent what this run would: its placement
        event always, its Orders API order with ``orders.api``."""
        return self.as_events or self.settings.orders.api


def mode_name(as_events: bool) -> str:
    """Where the orders go, as checkpoints and messages name it: ``orders`` or
    ``past_events``."""
    return "past_events" if as_events is True else "orders"


def read_checkpoint(engine: Engine, name: str) -> Checkpoint | None:
    """The checkpoint kept under ``name`` (with its prefix), or None."""
    with engine.connect() as conn:
        text = pause.kept_value(conn, name)
    if text is None:
        return None
    found: Mapping[str, Any] = json.loads(text)
    return Checkpoint(after=str(found["after"]), scope=str(found.get("scope", "")))


def check_page_size(value: object) -> int:
    """Orders per page: a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("page_size", f"must be a whole number of at least 1, got {value!r}")
    return value


def pages(orders: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``orders`` in lists of ``size`` (the last one shorter), read as they are needed."""
    it = iter(orders)
    while page := list(itertools.islice(it, size)):
        yield page


def backfill_orders(
    engine: Engine,
    settings: Settings,
    clock: Clock,
    orders: Iterable[object],
    *,
    as_events: bool = False,
    page_size: int | None = None,
    checkpoint: str | None = None,
    progress: Progress | None = None,
) -> BackfillReport:
    """Queue past orders page by page (see :meth:`~shop_events.tracker.Tracker.backfill_orders`)."""
    if isinstance(orders, Mapping | str | bytes) or not isinstance(orders, Iterable):
        raise ValidationError(
            "orders",
            f"must be an iterable of orders (mappings or objects), got {type(orders).__name__}",
        )
    size = settings.backfill.page_size if page_size is None else check_page_size(page_size)
    scope = mode_name(as_events)
    run = Backfill(engine, settings, clock, as_events=as_events, checkpoint=checkpoint, scope=scope)
    for page in pages(orders, size):
        run.write(page)
        if progress is not None:
            progress(run.report)
    return run.report

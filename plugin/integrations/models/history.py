"""The shop's past orders, read from its own order model for the backfill.

:class:`OrdersBackfill` reads the order model's rows a page at a time in primary-key order
(keyset pagination: each page starts after the last key of the one before, so no row is read
twice and memory stays flat), with their lines and what the getters follow in the same
statements; turns each row into a past order with live capture's own getters
(:meth:`~.listeners.CaptureModels.read_order`); and writes each page with
:class:`~shop_events.backfill.run.Backfill`, whose checkpoint is the page's last key.

``since``/``until`` select on ``OrderMapping.created``: in SQL when it names a column of the
order's table, else on the value read (every row is then read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, tuple_
from sqlalchemy.orm import ColumnProperty, Session, selectinload

from ...backfill.orders import UnreadableOrder
from ...backfill.run import (
    CHECKPOINT_MAX,
    Backfill,
    BackfillReport,
    check_page_size,
    mode_name,
)
from ...errors import ValidationError
from .failures import GetterError, message_of
from .listeners import CaptureModels
from .loading import load_options


@dataclasses.dataclass(frozen=True)
class Period:
    """When the orders were placed: from ``since`` (included) to ``until`` (not included)."""

    since: datetime | None = None
    until: datetime | None = None

    def __str__(self) -> str:
        start = self.since.isoformat() if self.since else "the first order"
        end = self.until.isoformat() if self.until else "the last"
        return f"{start} to {end}"

    def holds(self, moment: Any) -> bool:
        """Whether a value read by ``created`` is in the period (one that is not a time is
        left to the backfill's checks, which name it)."""
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            return True
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )


class OrdersBackfill:
    """A backfill of the order model's rows in ``period``: :meth:`remaining`, then
    :meth:`pages`.

    ``session`` reads the shop's models (it is closed after each page). The orders go where
    ``as_events`` says (see :class:`~shop_events.backfill.run.Backfill`); the run's checkpoint
    is named after the mode and the order table, and continues an interrupted run of the same
    period unless ``restart``. A :class:`ValidationError` says why the run cannot start.
    """

    def __init__(
        self,
        capture: CaptureModels,
        session: Session,
        *,
        period: Period = Period(),
        as_events: bool = False,
        page_size: int | None = None,
        restart: bool = False,
    ) -> None:
        mapping, parent = capture.order, capture.order_parent
        if mapping is None or parent is None:
            raise ValidationError(
                "order", "no OrderMapping: pass order=OrderMapping(...) to capture_models"
            )
        if mapping.created is None:
            raise ValidationError(
                "order.created",
                "the OrderMapping does not say when an order was placed: add "
                'created="<the column>" (e.g. created="created_at"), or a function of the order',
            )
        for name, moment in (("since", period.since), ("until", period.until)):
            if moment is not None and moment.tzinfo is None:
                raise ValidationError(name, "must be timezone-aware")
        tracker = capture.tracker
        self._capture = capture
        self._session = session
        self._period = period
        self._model = parent.mapper.class_
        self._key = tuple(parent.mapper.primary_key)
        self._key_names = [parent.mapper.get_property_by_column(c).key for c in self._key]
        self._created = _column(parent.mapper, mapping.created)
        getters = [mapping.id, mapping.email, mapping.total, mapping.currency, mapping.status]
        self._options = load_options(parent, [*getters, mapping.created], selectinload)
        self.page_size = (
            tracker.settings.backfill.page_size if page_size is None else check_page_size(page_size)
        )
        table = str(getattr(parent.mapper.local_table, "name", self._model.__name__))
        mode = mode_name(as_events)
        self.run = Backfill(
            tracker.engine,
            tracker.settings,
            tracker.clock,
            as_events=as_events,
            checkpoint=f"models:{mode}:{table}"[:CHECKPOINT_MAX],
            scope=f"{table} as {mode.replace('_', ' ')}, placed from {period}",
        )
        if restart:
            self.run.restart()
        found = self.run.resume_after()
        self.after: tuple[Any, ...] | None = None if found is None else tuple(json.loads(found))

    @property
    def report(self) -> BackfillReport:
        """What the run did so far."""
        return self.run.report

    def remaining(self) -> int:
        """How many rows are left to read (after the checkpoint, in the period when it can be
        selected in SQL)."""
        query = select(func.count()).select_from(self._model).where(*self._where(self.after))
        try:
            return int(self._session.execute(query).scalar_one())
        finally:
            self._session.close()

    def pages(self) -> Iterator[int]:
        """Read, check and queue one page at a time; yields how many rows each page read."""
        while True:
            rows = self._read_page()
            if not rows:
                return
            after = self._key_of(rows[-1])
            orders = [order for order in map(self._order, rows) if order is not None]
            self._session.close()  # the page's rows are done with: memory stays flat
            self.run.write(orders, json.dumps(after, default=str))
            self.after = after
            yield len(rows)

    def _read_page(self) -> Sequence[Any]:
        query = (
            select(self._model)
            .where(*self._where(self.after))
            .order_by(*self._key)
            .limit(self.page_size)
            .options(*self._options)
        )
        return self._session.execute(query).scalars().all()

    def _where(self, after: tuple[Any, ...] | None) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if after is not None:
            if len(self._key) == 1:
                conditions.append(self._key[0] > after[0])
            else:
                conditions.append(tuple_(*self._key) > tuple_(*after))
        created = self._created
        if created is not None:
            aware = bool(getattr(created.type, "timezone", False))
            if self._period.since is not None:
                conditions.append(created >= _bound(self._period.since, aware))
            if self._period.until is not None:
                conditions.append(created < _bound(self._period.until, aware))
        return conditions

    def _key_of(self, row: Any) -> tuple[Any, ...]:
        return tuple(getattr(row, name) for name in self._key_names)

    def _order(self, row: Any) -> object | None:
        """The row as a past order; an :class:`UnreadableOrder` when a getter raised; None when
        it lies outside the period (only where that could not be selected in SQL)."""
        # a failing created getter fails read_order too, which reports it with its field
        with contextlib.suppress(GetterError):
            if self._created is None and not self._period.holds(self._capture.order_created(row)):
                return None
        try:
            order = self._capture.read_order(row)
        except GetterError as exc:
            error = ValidationError(exc.field, f"its getter failed: {message_of(exc.error)}")
            key = self._key_of(row)
            label = self._capture.order_id(row) or str(key[0] if len(key) == 1 else key)
            return UnreadableOrder(label, error)
        return order


def _column(mapper: Any, created: Any) -> ColumnElement[Any] | None:
    """The order table's column ``created`` names, if it names one."""
    if not isinstance(created, str) or "." in created:
        return None
    prop = mapper.attrs.get(created)
    if not isinstance(prop, ColumnProperty) or len(prop.columns) != 1:
        return None
    column: ColumnElement[Any] = prop.columns[0]
    return column


def _bound(moment: datetime, aware: bool) -> datetime:
    """A period's end as the column compares it: aware, or naive UTC for a column without a
    time zone (SQLAlchemy's default ``DateTime``)."""
    utc = moment.astimezone(UTC)
    return utc if aware else utc.replace(tzinfo=None)

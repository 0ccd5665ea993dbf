"""Automatic capture from the shop's own SQLAlchemy models: :class:`CaptureModels` and the
session listeners.

Given the mappings (:mod:`.mappings`), the plugin listens to SQLAlchemy's ORM events and calls
the tracker itself:

- cart lines inserted, updated or deleted (also bulk ``session.execute(delete(CartLine)…)``),
  or the cart row changed → ``cart_updated`` with the whole cart as it is at commit, and
  ``cart_cleared`` when it became empty;
- an order inserted → ``order_placed`` at commit once it has lines: an order committed without
  lines waits for the commit that adds them, so no order goes out without its products. A later
  change of its status (with ``status=`` mapped) → ``order_status_changed``;
- a customer inserted → ``registration_completed`` (and ``contact_upserted`` if asked).

A capture that fails is counted per mapping and field (:mod:`.failures`; ``shop-events status``
and the health page list them) and never silently lost: an order that cannot be read
completely (its total not set yet) is kept in the plugin's tables and placed at the next commit
that touches it (or, in the same process, the next commit that touches a cart, an order or a
customer); a cart whose current state cannot be captured is suppressed, so that its older
state is never reminded, until a valid state arrives. :meth:`CaptureModels.check` runs every
getter against one row of each model at start.

What changed is collected at every flush and turned into captures when the outermost
transaction commits, so a rolled-back transaction emits nothing. When the plugin's tables are in
the same database as the models, the rows are written inside the host's transaction just before
it commits (a failing commit loses both); otherwise with the plugin's own engine just after it.

The listeners are registered on SQLAlchemy's ``Session`` class once per process, however many
apps or captures it creates; each capture handles only the sessions bound to its ``engines``
(all sessions when not given). Under Flask,
:func:`~shop_events.integrations.flask.capture_models` builds one for Flask-SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    UOWTransaction,
    scoped_session,
)
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.base import PassiveFlag

from ...config import scrub
from ...errors import StorageError
from ...payload.items import canonical_items
from ...storage import kept_captures, orders
from ...storage.engines import transaction
from ...storage.savepoint import savepoint
from ...tracker import Tracker
from .failures import ErrorLog, GetterError, describe, message_of, read
from .loading import Loader
from .mappings import (
    CartMapping,
    CustomerMapping,
    ItemGetter,
    Key,
    OrderMapping,
    Parent,
    getter_of,
    mapper_of,
    parent_of,
    status_reader,
)

log = logging.getLogger(__name__)

__all__ = ["CaptureModels", "same_database"]

T = TypeVar("T")
ErrorHandler = Callable[[str, Exception], None]
Call = Callable[["Connection | None"], None]
"""One tracker call, on the host's connection (inside its transaction) or, given None, ours."""
OnFail = Callable[["Connection | None", Exception], None]
"""What to write when a call failed (keep the order, suppress the cart), on the same terms."""

_RETRY_ELSEWHERE = 10
"""A kept order is tried again at commits that do not touch it this many times per process;
after that only a commit that touches the order itself tries it."""
_KEPT_IN_MEMORY = 1000
_CHECK_ROWS = 20
"""Rows a start check looks through for a cart or order that has lines."""
_CHECK_LINES = 3

# -- what the listeners know about a mapping ---------------------------------------------------


class _Role(enum.Enum):
    CART = "cart"
    CART_LINE = "cart line"
    ORDER = "order"
    ORDER_LINE = "order line"
    CUSTOMER = "customer"


def _key(state: InstanceState[Any], keys: Sequence[str]) -> tuple[Key | None, Key | None]:
    """The key's current and previous values from the instance, without loading anything."""
    now: list[Any] = []
    before: list[Any] = []
    moved = False
    for attr in keys:
        history = state.get_history(attr, PassiveFlag.PASSIVE_NO_INITIALIZE)
        current = history.added or history.unchanged
        if not current:
            return None, None
        now.append(current[0])
        if history.deleted and history.deleted[0] is not None:
            before.append(history.deleted[0])
            moved = True
        else:
            before.append(current[0])
    key = tuple(now)
    return (None if None in key else key), (tuple(before) if moved else None)


def _primary_key(state: InstanceState[Any]) -> Key | None:
    values = tuple(state.mapper.primary_key_from_instance(state.obj()))
    return None if None in values else values


@dataclasses.dataclass(frozen=True)
class _Capture:
    """One tracker call computed at commit, and what to write if it fails."""

    mapping: str
    what: str
    call: Call
    on_fail: OnFail | None = None


def _label(key: Key) -> str:
    return str(key[0] if len(key) == 1 else key)


def _encode(key: Key) -> str:
    """A row's key as text for the kept captures table."""
    plain = [v if v is None or isinstance(v, int | float | str) else str(v) for v in key]
    return json.dumps(plain, separators=(",", ":"))


# -- per session and transaction ---------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    """What one capture saw in one session's transaction, until it commits or rolls back."""

    carts: dict[Key, str | None] = dataclasses.field(default_factory=dict)
    """Carts to send at commit; the value is the plugin's id, known for carts being deleted."""
    new_carts: set[Key] = dataclasses.field(default_factory=set)
    new_orders: dict[Key, None] = dataclasses.field(default_factory=dict)
    """Orders inserted, or given new lines: placed at commit if they have lines."""
    changed_orders: dict[Key, None] = dataclasses.field(default_factory=dict)
    customers: dict[Key, None] = dataclasses.field(default_factory=dict)
    other: bool = False
    """Something else of the mapped models changed (a customer updated): a kept order is tried
    again at such a commit too."""
    deferred: list[_Capture] = dataclasses.field(default_factory=list)
    """Captures computed at commit, written after it with the plugin's engine."""

    def touched(self) -> bool:
        return bool(self.captures() or self.other)

    def captures(self) -> bool:
        return bool(self.carts or self.new_orders or self.changed_orders or self.customers)

    def forget_touched(self) -> None:
        self.other = False
        self.carts.clear()
        self.new_carts.clear()
        self.new_orders.clear()
        self.changed_orders.clear()
        self.customers.clear()


_INFO_KEY = "shop_events.orm"


def _pending(session: Session, capture: CaptureModels) -> _Pending:
    found: dict[CaptureModels, _Pending] = session.info.setdefault(_INFO_KEY, {})
    return found.setdefault(capture, _Pending())


def _pendings(session: Session) -> dict[CaptureModels, _Pending]:
    found: dict[CaptureModels, _Pending] = session.info.get(_INFO_KEY, {})
    return found


# -- the capture -------------------------------------------------------------------------------


class CaptureModels:
    """Captures carts, orders and customers from the shop's models, at each commit.

    ``engines``: handle only sessions bound to these engines (several apps in one process each
    have their own); all sessions when None. ``capture_outside_requests=False`` ignores work
    done where ``in_request()`` is false (seed scripts, CLI commands). ``join_transaction``:
    write inside the host's transaction; by default when the models' database is the plugin's.
    ``on_error(what, exc)`` is called when a capture cannot be recorded (bad data, a broken
    getter, a database error); by default it is logged and the shop's commit goes on. Raise
    from it to make the commit fail instead. Either way the failure is counted per mapping and
    field in the capture errors (``shop-events status``, the health page).

    The capture stays active until :meth:`close`. A second capture of the same model for the
    same sessions is refused: every change would be sent twice. :meth:`check` runs every getter
    once against the shop's data, for the start of the shop.
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        cart: CartMapping[Any] | None = None,
        order: OrderMapping[Any] | None = None,
        customer: CustomerMapping[Any] | None = None,
        engines: Engine | Iterable[Engine] | None = None,
        capture_outside_requests: bool = True,
        in_request: Callable[[], bool] | None = None,
        join_transaction: bool | None = None,
        on_error: ErrorHandler | None = None,
    ) -> None:
        if cart is None and order is None and customer is None:
            raise ValueError("CaptureModels needs cart=, order= or customer=")
        if not capture_outside_requests and in_request is None:
            raise ValueError(
                "capture_outside_requests=False needs in_request= (under Flask, "
                "shop_events.integrations.flask.capture_models passes it)"
            )
        self.tracker = tracker
        self.engines: tuple[Engine, ...] | None = (
            None
            if engines is None
            else (engines,)
            if isinstance(engines, Engine)
            else tuple(engines)
        )
        self.capture_outside_requests = capture_outside_requests
        self._in_request = in_request
        self._join = join_transaction
        self._on_error = on_error
        self.cart = cart
        self.order = order
        self.customer = customer
        self._roles: dict[Mapper[Any], _Role] = {}
        self._role_cache: dict[Mapper[Any], _Role | None] = {}
        self._cart: Parent | None = None
        self._order: Parent | None = None
        self._errors = ErrorLog(tracker)
        self._kept: dict[Key, int] = {}
        """Orders kept in this process: their failed attempts here."""
        self._same: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()
        """Whether the shop's engine reaches the plugin's database, per engine."""
        if cart is not None:
            self._cart = parent_of("cart", cart.model, cart.lines, cart.line_model, cart.line_key)
            fields = ("id", "email", "visitor_id", "currency", "restore_url")
            self._cart_get = {
                name: getter_of(f"cart.{name}", cart.model, getattr(cart, name)) for name in fields
            }
            self._cart_load = Loader(
                cart.model, self._cart, [getattr(cart, name) for name in fields], _OWN
            )
            self._roles[self._cart.mapper] = _Role.CART
            self._roles[self._cart.line_mapper] = _Role.CART_LINE
        if order is not None:
            self._order = parent_of(
                "order", order.model, order.lines, order.line_model, order.line_key
            )
            self._order_get = {
                name: getter_of(f"order.{name}", order.model, getattr(order, name))
                for name in ("id", "email", "total", "currency", "cart_id")
            }
            self._order_get["status"] = status_reader(
                "order", order.model, order.status, order.status_map
            )
            self._order_created = getter_of("order.created", order.model, order.created)
            self._order_load = Loader(
                order.model,
                self._order,
                [getattr(order, name) for name in ("id", "email", "total", "currency", "cart_id")]
                + [order.status],
                _OWN,
            )
            self._order_table = str(getattr(self._order.mapper.local_table, "name", "order"))
            self._roles[self._order.mapper] = _Role.ORDER
            self._roles[self._order.line_mapper] = _Role.ORDER_LINE
        if customer is not None:
            self._customer = mapper_of("customer", customer.model)
            self._customer_get = {
                name: getter_of(f"customer.{name}", customer.model, getattr(customer, name))
                for name in ("email", "first_name", "last_name", "phone")
            }
            if self._customer in self._roles:
                raise ValueError("customer.model: the model is already mapped as a cart or order")
            self._roles[self._customer] = _Role.CUSTOMER
        if len(self._roles) < (2 if cart else 0) + (2 if order else 0) + (1 if customer else 0):
            raise ValueError("cart, order and customer must use different models")
        self._any_mapper = next(iter(self._roles))
        _register(self)

    def __repr__(self) -> str:
        models = ", ".join(m.class_.__name__ for m in self._roles)
        return f"CaptureModels({models})"

    def _role_of(self, mapper: Mapper[Any]) -> _Role | None:
        """The role of a model's rows (a subclass of a mapped model has its base's role)."""
        try:
            return self._role_cache[mapper]
        except KeyError:
            pass
        role = next((self._roles[m] for m in mapper.iterate_to_root() if m in self._roles), None)
        self._role_cache[mapper] = role
        return role

    @property
    def active(self) -> bool:
        """Whether this capture is registered (not yet closed)."""
        return self in _registry

    def close(self) -> None:
        """Stop capturing: changes committed from now on are not seen by this capture."""
        _unregister(self)

    # -- which sessions --------------------------------------------------------------------

    def wants(self, session: Session) -> bool:
        """Whether this capture handles ``session`` now."""
        if not self.capture_outside_requests:
            assert self._in_request is not None
            if not self._in_request():
                return False
        if self.engines is None:
            return True
        bind = self._bind(session)
        return bind is not None and any(bind is engine for engine in self.engines)

    def _bind(self, session: Session) -> Engine | None:
        try:
            bind = session.get_bind(mapper=self._any_mapper)
        except Exception:  # an unbound session, or Flask-SQLAlchemy outside an app context
            return None
        return bind.engine

    def _joins(self, session: Session) -> bool:
        if self._join is not None:
            return self._join
        bind = self._bind(session)
        if bind is None:
            return False
        joins = self._same.get(bind)
        if joins is None:
            joins = self._same[bind] = same_database(bind, self.tracker.engine)
        return joins

    # -- collecting (at each flush) --------------------------------------------------------

    def _note(self, session: Session, role: _Role, state: InstanceState[Any], how: str) -> None:
        pending = _pending(session, self)
        pending.other = True
        if role is _Role.CART:
            assert self._cart is not None
            key, _ = _key(state, self._cart.keys)
            if key is None:
                return
            if how == "deleted":
                if pending.carts.get(key) is None:
                    pending.carts[key] = self._deleted_cart_id(state, key)
            else:
                pending.carts.setdefault(key, None)
                if how == "new":
                    pending.new_carts.add(key)
        elif role is _Role.CART_LINE:
            assert self._cart is not None
            for key in _key(state, self._cart.line_keys):
                if key is not None:
                    pending.carts.setdefault(key, None)
        elif role is _Role.ORDER:
            assert self._order is not None
            key, _ = _key(state, self._order.keys)
            if key is not None and how == "new":
                pending.new_orders[key] = None
            elif key is not None and how == "dirty":
                pending.changed_orders[key] = None
        elif role is _Role.ORDER_LINE:
            assert self._order is not None
            key, _ = _key(state, self._order.line_keys)
            if key is not None and how == "new":
                pending.new_orders[key] = None
        elif role is _Role.CUSTOMER and how == "new":
            key = _primary_key(state)
            if key is not None:
                pending.customers[key] = None

    def _deleted_cart_id(self, state: InstanceState[Any], key: Key) -> str | None:
        try:
            value = self._cart_get["id"](state.obj())
        except Exception:
            value = self._cart_id_from_key(key)
        return None if value is None else str(value)

    def _cart_id_from_key(self, key: Key) -> str | None:
        # The usual case: the cart is known by its primary key, the column its lines point at.
        assert self.cart is not None and self._cart is not None
        if isinstance(self.cart.id, str) and (self.cart.id,) == self._cart.keys:
            return str(key[0])
        return None

    def _bulk(self, state: ORMExecuteState, role: _Role) -> None:
        """``session.execute(delete/update/insert(...))``: the carts or orders it touches."""
        session = state.session
        statement: Any = state.statement
        pending = _pending(session, self)
        parent = self._cart if role in (_Role.CART, _Role.CART_LINE) else self._order
        if state.is_insert:
            if role in (_Role.CART_LINE, _Role.ORDER_LINE):
                assert parent is not None
                for key in _keys_in(state.parameters, parent.line_keys, parent.line_columns):
                    if role is _Role.CART_LINE:
                        pending.carts.setdefault(key, None)
                    else:
                        pending.new_orders[key] = None
            return
        where = statement.whereclause
        assert parent is not None
        bind_arguments = {"mapper": parent.mapper}
        if role is _Role.CART_LINE:
            query = select(*parent.line_columns).distinct()
            rows = session.execute(
                query if where is None else query.where(where), bind_arguments=bind_arguments
            )
            for row in rows:
                if None not in tuple(row):
                    pending.carts.setdefault(tuple(row), None)
        elif role is _Role.CART:
            query = select(parent.mapper)
            found = session.execute(
                query if where is None else query.where(where), bind_arguments=bind_arguments
            ).scalars()
            for cart in found:
                key = tuple(getattr(cart, k) for k in parent.keys)
                if state.is_delete:
                    pending.carts[key] = self._deleted_cart_id(inspect(cart), key)
                else:
                    pending.carts.setdefault(key, None)
        elif role is _Role.ORDER and state.is_update:
            query = select(*parent.columns)
            rows = session.execute(
                query if where is None else query.where(where), bind_arguments=bind_arguments
            )
            for row in rows:
                pending.changed_orders[tuple(row)] = None

    # -- acting (at commit) ----------------------------------------------------------------

    def _commit(self, session: Session, pending: _Pending) -> None:
        """Compute the captures of this transaction; write them now if joining it."""
        retry = self.order is not None and self._kept_to_retry()
        if not pending.captures() and not retry:
            pending.forget_touched()
            return
        joined = self._joins(session)
        captures: list[_Capture] = []
        for mapping, compute in (("customer", self._customer_calls), ("cart", self._cart_calls)):
            try:
                captures += compute(session, pending)
            except Exception as exc:
                self._failed(mapping, f"the {mapping}s of this commit", exc)
        if self.order is not None and (pending.new_orders or pending.changed_orders or retry):
            try:
                if joined:
                    conn = self._connection(session)
                    with savepoint(conn, _SAVEPOINT):
                        captures += self._order_calls(session, pending, conn)
                else:
                    with self.tracker.engine.connect() as conn:
                        captures += self._order_calls(session, pending, conn)
            except Exception as exc:
                self._failed("order", "the orders of this commit", exc)
        pending.forget_touched()
        if joined:
            conn = self._connection(session)
            for capture in captures:
                self._run(capture, conn, pending)
        else:
            pending.deferred += captures

    def _after_commit(self, pending: _Pending) -> None:
        captures, pending.deferred = pending.deferred, []
        for capture in captures:
            self._run(capture, None)

    def _connection(self, session: Session) -> Connection:
        return session.connection(bind_arguments={"mapper": self._any_mapper})

    def _run(
        self, capture: _Capture, conn: Connection | None, pending: _Pending | None = None
    ) -> None:
        late = None if pending is None else functools.partial(self._failed_late, capture, pending)
        try:
            with savepoint(conn, _SAVEPOINT, on_late_failure=late):
                capture.call(conn)
        except Exception as exc:
            if capture.on_fail is not None:
                try:
                    with savepoint(conn, _SAVEPOINT):
                        capture.on_fail(conn, exc)
                except Exception as also:
                    log.log(self._level(also), "%s: %s", capture.what, message_of(also))
            self._failed(capture.mapping, capture.what, exc)

    def _failed_late(self, capture: _Capture, pending: _Pending, exc: Exception) -> None:
        """The capture's write, sent with the host's commit, failed there and was rolled back
        (the shop's commit goes on): counted now, its ``on_fail`` written after the commit."""
        reason = scrub(message_of(exc), self.tracker.settings.database.url)
        error = StorageError(f"{capture.what} was not recorded: {reason}")
        on_fail = capture.on_fail
        if on_fail is not None:
            pending.deferred.append(
                _Capture(capture.mapping, capture.what, lambda conn: on_fail(conn, error))
            )
        self._failed(capture.mapping, capture.what, error)

    def _failed(self, mapping: str, what: str, exc: Exception) -> None:
        failure = describe(exc)
        self._errors.note(mapping, failure.field, what, failure.message)
        if self._on_error is not None:
            self._on_error(what, failure.error)
        else:
            log.log(self._level(exc), "%s was not captured: %s.%s", what, mapping, failure.detail)

    def _level(self, exc: Exception) -> int:
        """ERROR; DEBUG for a database error while the plugin's tables are known to be missing:
        the tracker said so once, and every commit failing on them would only repeat it."""
        quiet = self.tracker.tables_missing and isinstance(exc, StorageError | SQLAlchemyError)
        return logging.DEBUG if quiet else logging.ERROR

    def _customer_calls(self, session: Session, pending: _Pending) -> Iterator[_Capture]:
        if self.customer is None or not pending.customers:
            return
        mapping, get = self.customer, self._customer_get
        for key in list(pending.customers):
            customer = session.get(mapping.model, key)
            if customer is None:  # inserted in a savepoint that rolled back
                continue
            what = f"the new {mapping.model.__name__} {_label(key)}"
            try:
                values = {name: read(name, getter, customer) for name, getter in get.items()}
                if mapping.fields is not None:
                    values["fields"] = read("fields", mapping.fields, customer)
            except Exception as exc:
                self._failed("customer", what, exc)
                continue
            yield _Capture("customer", what, self._customer_call(values))

    def _customer_call(self, values: dict[str, Any]) -> Call:
        assert self.customer is not None
        upsert = self.customer.upsert_contact

        def call(conn: Connection | None) -> None:
            email = values["email"]
            self.tracker.registration_completed(email, connection=conn)
            if upsert:
                self.tracker.contact_upserted(
                    email,
                    first_name=values["first_name"],
                    last_name=values["last_name"],
                    phone=values["phone"],
                    fields=values.get("fields"),
                    created=True,
                    connection=conn,
                )

        return call

    def _cart_calls(self, session: Session, pending: _Pending) -> Iterator[_Capture]:
        if self.cart is None or not pending.carts:
            return
        assert self._cart is not None
        mapping, parent, get = self.cart, self._cart, self._cart_get
        for key, known_id in list(pending.carts.items()):
            cart = self._cart_load(session, key)
            if cart is None:
                cart_id = known_id or self._cart_id_from_key(key)
                if cart_id is not None:
                    what = f"the deleted cart {cart_id}"
                    yield _Capture("cart", what, _cleared(self.tracker, cart_id))
                continue
            what = f"the cart {_label(key)}"
            try:
                lines = list(read("lines", parent.read_lines, cart))
                if not lines and key in pending.new_carts:
                    continue  # a new empty cart: nothing to clear
                values = {name: read(name, getter, cart) for name, getter in get.items()}
                values["items"] = [read("item", mapping.item, line) for line in lines]
            except Exception as exc:
                # its current state is unknown: the state recorded before must not be reminded
                self._failed("cart", what, exc)
                cart_id = self._readable_cart_id(cart, key)
                if cart_id is not None:
                    yield _Capture("cart", what, _rejected(self.tracker, cart_id))
                continue
            cart_id = values.pop("id")
            if not lines:
                yield _Capture("cart", what, _cleared(self.tracker, cart_id))
            else:
                yield _Capture(
                    "cart",
                    what,
                    self._cart_call(cart_id, values),
                    on_fail=_rejected_on_fail(self.tracker, cart_id),
                )

    def _readable_cart_id(self, cart: Any, key: Key) -> str | None:
        try:
            value = self._cart_get["id"](cart)
        except Exception:
            return self._cart_id_from_key(key)
        return None if value is None else str(value)

    def _cart_call(self, cart_id: Any, values: dict[str, Any]) -> Call:
        def call(conn: Connection | None) -> None:
            self.tracker.cart_updated(cart_id, connection=conn, **values)

        return call

    # -- orders, and those kept to be tried again -------------------------------------------

    def _kept_to_retry(self) -> bool:
        return any(tries < _RETRY_ELSEWHERE for tries in list(self._kept.values()))

    def _order_calls(
        self, session: Session, pending: _Pending, plugin: Connection
    ) -> list[_Capture]:
        assert self.order is not None and self._order is not None
        mapping, parent, get = self.order, self._order, self._order_get
        retry = {key: None for key, tries in list(self._kept.items()) if tries < _RETRY_ELSEWHERE}
        calls: list[_Capture] = []
        found: list[tuple[Key, str, Any]] = []
        for key in {**pending.new_orders, **pending.changed_orders, **retry}:
            order = self._order_load(session, key)
            if order is None:
                if key in self._kept:  # the shop deleted it
                    calls.append(self._released(key))
                continue
            try:
                order_id = read("id", get["id"], order)
                if order_id is None:
                    raise GetterError("id", ValueError("the order's id is None"))
            except Exception as exc:
                what = f"the order {_label(key)}"
                self._failed("order", what, exc)
                if key in pending.new_orders or key in self._kept:
                    calls.append(self._keep_now(key, what, exc))
                continue
            found.append((key, str(order_id).strip(), order))
        if not found:
            return calls
        stored = orders.statuses(plugin, [order_id for _, order_id, _ in found])
        unknown = [
            _encode(key)
            for key, order_id, _ in found
            if order_id not in stored and key not in pending.new_orders and key not in self._kept
        ]
        kept_elsewhere = kept_captures.which(plugin, self._order_table, unknown)
        for key, order_id, order in found:
            what = f"the order {order_id}"
            kept = key in self._kept or _encode(key) in kept_elsewhere
            if order_id in stored:
                if kept:  # placed by another process meanwhile
                    calls.append(self._released(key))
                if mapping.status is not None:
                    try:
                        status = read("status", get["status"], order)
                    except Exception as exc:
                        self._failed("order", what, exc)
                        continue
                    if status is not None and str(status).strip().upper() != stored[order_id]:
                        calls.append(_Capture("order", what, self._status_call(order_id, status)))
                continue
            if key not in pending.new_orders and not kept:
                continue  # an order from before the plugin: only new orders are placed
            try:
                lines = list(read("lines", parent.read_lines, order))
                if not lines:
                    log.debug("%s has no lines yet: placed when they are committed", what)
                    continue
                values = self._order_values(order, lines)
            except Exception as exc:
                self._failed("order", what, exc)
                calls.append(self._keep_now(key, what, exc))
                continue
            if mapping.total is not None and values["total"] is None:
                # Not an error: a shop that writes the lines in several commits sets the total
                # last. Placed now, the order would go without its later lines.
                unset = GetterError("total", ValueError("not set yet"))
                calls.append(self._keep_now(key, what, unset, logging.INFO))
                continue
            calls.append(
                _Capture(
                    "order",
                    what,
                    self._placed_call(key, order_id, values, kept),
                    on_fail=self._keep_later(key, what),
                )
            )
        return calls

    def _order_values(self, order: Any, lines: Iterable[Any]) -> dict[str, Any]:
        """The order's values as :meth:`Tracker.order_placed` takes them (``id`` too), read by
        the mapping's getters; a getter that raises is a :class:`GetterError` naming it."""
        assert self.order is not None
        values = {name: read(name, getter, order) for name, getter in self._order_get.items()}
        values["items"] = [read("item", self.order.item, line) for line in lines]
        return values

    def read_order(self, order: Any) -> dict[str, Any]:
        """A row of the order model as a past order (``order_id``, ``email``, ``items``,
        ``total``, ``currency``, ``status``, ``created``; see :mod:`shop_events.backfill`),
        read by the same getters as live capture. A naive ``created`` is taken as UTC; a getter
        that raises is a :class:`GetterError` naming its field."""
        if self.order is None or self._order is None:
            raise ValueError("read_order needs order= (an OrderMapping)")
        values = self._order_values(order, read("lines", self._order.read_lines, order))
        values["order_id"] = values.pop("id")
        values.pop("cart_id")
        values["created"] = self.order_created(order)
        return values

    def order_created(self, order: Any) -> Any:
        """When the order was placed, by ``OrderMapping.created`` (a naive time as UTC)."""
        created = read("created", self._order_created, order)
        if isinstance(created, datetime) and created.tzinfo is None:
            return created.replace(tzinfo=UTC)
        return created

    def order_id(self, order: Any) -> str | None:
        """The order's id as the mapping reads it, or None when it cannot be read."""
        try:
            value = self._order_get["id"](order)
        except Exception:
            return None
        return None if value is None else str(value).strip()

    @property
    def order_parent(self) -> Parent | None:
        """The order model with its lines, as checked against the mapping (None without
        ``order=``)."""
        return self._order

    def _kept_here(self, key: Key) -> None:
        self._kept[key] = self._kept.get(key, 0) + 1
        if len(self._kept) > _KEPT_IN_MEMORY:
            self._kept.pop(next(iter(self._kept)), None)

    def _keep_now(
        self, key: Key, what: str, exc: Exception, level: int = logging.WARNING
    ) -> _Capture:
        """Keep the order whose capture failed while it was read (written with the others)."""
        keep = self._keep_later(key, what, level)

        def call(conn: Connection | None) -> None:
            keep(conn, exc)

        return _Capture("order", what, call)

    def _keep_later(self, key: Key, what: str, level: int = logging.WARNING) -> OnFail:
        self._kept_here(key)
        table = self._order_table

        def keep(conn: Connection | None, exc: Exception) -> None:
            failure = describe(exc)
            now = self.tracker.clock()
            log.log(
                level,
                "%s is kept and tried again at the next commit that touches it (order.%s)",
                what,
                failure.detail,
            )
            with transaction(self.tracker.engine, conn) as tx:
                kept_captures.keep(
                    tx,
                    mapping="order",
                    model=table,
                    subject_key=_encode(key),
                    subject=what,
                    field=failure.field,
                    error=failure.message,
                    now=now,
                )

        return keep

    def _released(self, key: Key) -> _Capture:
        table = self._order_table

        def call(conn: Connection | None) -> None:
            with transaction(self.tracker.engine, conn) as tx:
                kept_captures.release(tx, table, _encode(key))
            self._kept.pop(key, None)

        return _Capture("order", f"the kept order {_label(key)}", call)

    def _placed_call(self, key: Key, order_id: str, values: dict[str, Any], kept: bool) -> Call:
        values.pop("id")
        if values["status"] is None:
            del values["status"]  # the tracker's default
        table = self._order_table

        def call(conn: Connection | None) -> None:
            if not kept:
                self.tracker.order_placed(order_id, connection=conn, **values)
                return
            with transaction(self.tracker.engine, conn) as tx:
                self.tracker.order_placed(order_id, connection=tx, **values)
                kept_captures.release(tx, table, _encode(key))
            self._kept.pop(key, None)
            log.info("the order %s, kept until it could be read, is placed", order_id)

        return call

    def _status_call(self, order_id: str, status: str) -> Call:
        def call(conn: Connection | None) -> None:
            self.tracker.order_status_changed(order_id, status=status, connection=conn)

        return call

    # -- the check at start -----------------------------------------------------------------

    def check(
        self, bind: Session | scoped_session[Session] | Engine | Connection | None = None
    ) -> list[str]:
        """Run every getter of each mapping against one row of its model, where one exists.

        A dry run for the start of the shop: a cart and an order with lines are preferred, so
        that ``item`` runs too. Nothing is captured; each problem is logged at ERROR, counted
        in the capture errors and returned as ``mapping.field: message`` (``cart.item:
        'Product' object has no attribute 'name'``). ``bind`` is a session or a scoped session
        such as Flask-SQLAlchemy's ``db.session`` (left open; a transaction it began here is
        rolled back) or an engine; by default the first of ``engines``. A model whose rows
        cannot be read (its table does not exist yet) is skipped.
        """
        if bind is None:
            if not self.engines:
                raise ValueError("check() needs a session or an engine (or engines= given)")
            bind = self.engines[0]
        if isinstance(bind, scoped_session):
            bind = bind()
        given = isinstance(bind, Session)
        session = bind if isinstance(bind, Session) else Session(bind=bind)
        began = not session.in_transaction()
        problems: list[str] = []
        try:
            with session.no_autoflush:
                if self.cart is not None and self._cart is not None:
                    problems += self._check_parent(
                        session, "cart", self._cart, self._cart_get, self.cart.item
                    )
                if self.order is not None and self._order is not None:
                    problems += self._check_parent(
                        session, "order", self._order, self._order_get, self.order.item
                    )
                if self.customer is not None:
                    getters = dict(self._customer_get)
                    if self.customer.fields is not None:
                        getters["fields"] = self.customer.fields
                    problems += self._check_row(session, "customer", self._customer, getters)
        finally:
            if not given:
                session.close()
            elif began and session.in_transaction():
                session.rollback()
        self._errors.flush()
        return problems

    def _check_parent(
        self,
        session: Session,
        mapping: str,
        parent: Parent,
        getters: dict[str, Callable[[Any], Any]],
        item: ItemGetter,
    ) -> list[str]:
        query = select(parent.mapper)
        if parent.lines is not None:
            query = query.where(parent.lines.class_attribute.any())
        try:
            rows = session.execute(query.limit(_CHECK_ROWS)).scalars().all()
        except SQLAlchemyError as exc:
            return self._not_checked(session, mapping, exc)
        if not rows:
            return []
        row, lines = rows[0], []
        for candidate in rows:
            subject = self._check_subject(parent.mapper, candidate)
            try:
                lines = list(read("lines", parent.read_lines, candidate))
            except GetterError as exc:
                return [self._problem(mapping, subject, exc)]
            row = candidate
            if lines:
                break
        subject = self._check_subject(parent.mapper, row)
        problems = self._check_getters(mapping, subject, row, getters)
        for line in lines[:_CHECK_LINES]:
            try:
                made = read("item", item, line)
                canonical_items([made])
            except GetterError as exc:
                problems.append(self._problem(mapping, subject, exc))
                break
            except Exception as exc:
                problems.append(self._problem(mapping, subject, GetterError("item", exc)))
                break
        return problems

    def _check_row(
        self,
        session: Session,
        mapping: str,
        mapper: Mapper[Any],
        getters: dict[str, Callable[[Any], Any]],
    ) -> list[str]:
        try:
            row = session.execute(select(mapper).limit(1)).scalars().first()
        except SQLAlchemyError as exc:
            return self._not_checked(session, mapping, exc)
        if row is None:
            return []
        return self._check_getters(mapping, self._check_subject(mapper, row), row, getters)

    def _check_getters(
        self, mapping: str, subject: str, row: Any, getters: dict[str, Callable[[Any], Any]]
    ) -> list[str]:
        problems = []
        for name, getter in getters.items():
            try:
                read(name, getter, row)
            except GetterError as exc:
                problems.append(self._problem(mapping, subject, exc))
        return problems

    def _check_subject(self, mapper: Mapper[Any], row: Any) -> str:
        key = tuple(mapper.primary_key_from_instance(row))
        return f"the check at start ({mapper.class_.__name__} {_label(key)})"

    def _problem(self, mapping: str, subject: str, exc: GetterError) -> str:
        failure = describe(exc)
        self._errors.note(mapping, failure.field, subject, failure.message)
        text = f"{mapping}.{failure.field}: {failure.message}"
        log.error("%s (%s)", text, subject)
        return text

    def _not_checked(self, session: Session, mapping: str, exc: Exception) -> list[str]:
        session.rollback()  # PostgreSQL refuses anything more in a failed transaction
        log.info("the %s mapping was not checked: its rows cannot be read (%s)", mapping, exc)
        return []


def _cleared(tracker: Tracker, cart_id: Any) -> Call:
    def call(conn: Connection | None) -> None:
        tracker.cart_cleared(cart_id, connection=conn)

    return call


def _rejected(tracker: Tracker, cart_id: Any) -> Call:
    def call(conn: Connection | None) -> None:
        tracker.cart_rejected(cart_id, connection=conn)

    return call


def _rejected_on_fail(tracker: Tracker, cart_id: Any) -> OnFail:
    """A refused cart update suppresses the cart (again, in its own savepoint: the failed
    call's savepoint was rolled back with what the tracker wrote in it)."""

    def on_fail(conn: Connection | None, _exc: Exception) -> None:
        tracker.cart_rejected(cart_id, connection=conn)

    return on_fail


_SAVEPOINT = "shop_events_capture"
"""The savepoint a capture on the host's connection writes in (see storage.savepoint)."""


def _keys_in(
    parameters: Any, keys: Sequence[str], columns: Sequence[ColumnElement[Any]]
) -> list[Key]:
    """Foreign keys in the parameters of a bulk insert (by attribute key or column name)."""
    rows = parameters if isinstance(parameters, list | tuple) else [parameters or {}]
    found: list[Key] = []
    for row in rows:
        values = tuple(
            row.get(attr, row.get(column.key)) for attr, column in zip(keys, columns, strict=True)
        )
        if None not in values:
            found.append(values)
    return found


def same_database(a: Engine, b: Engine) -> bool:
    """Whether two engines reach the same database (an in-memory SQLite is its engine's own)."""
    if a is b:
        return True
    url_a, url_b = make_url(str(a.url)), make_url(str(b.url))
    if url_a.get_backend_name() != url_b.get_backend_name():
        return False
    if url_a.get_backend_name() == "sqlite":
        files = [u.database for u in (url_a, url_b)]
        if any(f in (None, "", ":memory:") for f in files):
            return False
        return os.path.realpath(str(files[0])) == os.path.realpath(str(files[1]))
    return (url_a.host, url_a.port, url_a.database, url_a.query.get("host")) == (
        url_b.host,
        url_b.port,
        url_b.database,
        url_b.query.get("host"),
    )


# -- the process-wide listeners ----------------------------------------------------------------

_registry: tuple[CaptureModels, ...] = ()
_lock = threading.Lock()
_listening = False


def _register(capture: CaptureModels) -> None:
    global _registry
    with _lock:
        for other in _registry:
            shared = set(capture._roles) & set(other._roles)
            if shared and _overlap(capture.engines, other.engines):
                names = ", ".join(sorted(m.class_.__name__ for m in shared))
                raise ValueError(
                    f"{names} already captured by {other!r} for the same sessions: every "
                    "change would be sent twice. close() it first, or pass engines= to tell "
                    "the apps apart"
                )
        _registry = (*_registry, capture)
        _listen()


def _unregister(capture: CaptureModels) -> None:
    global _registry
    with _lock:
        _registry = tuple(c for c in _registry if c is not capture)


def _overlap(a: tuple[Engine, ...] | None, b: tuple[Engine, ...] | None) -> bool:
    if a is None or b is None:
        return True
    return any(x is y for x in a for y in b)


def _listen() -> None:
    """Register the listeners on the ``Session`` class, once per process (under ``_lock``)."""
    global _listening
    if _listening:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "do_orm_execute", _do_orm_execute)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_soft_rollback)
    event.listen(Session, "after_transaction_end", _after_transaction_end)
    _listening = True


def _watching(session: Session) -> list[CaptureModels]:
    """The captures that handle this session now."""
    return [capture for capture in _registry if capture.wants(session)]


def _roles(
    captures: Sequence[CaptureModels], mapper: Mapper[Any]
) -> Iterator[tuple[CaptureModels, _Role]]:
    for capture in captures:
        role = capture._role_of(mapper)
        if role is not None:
            yield capture, role


def _before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    # A cart or line about to be deleted may have been expired by an earlier commit: read what
    # identifies it now, while its row still exists.
    if not _registry or not session.deleted:
        return
    captures = _watching(session)
    for obj in session.deleted:
        state: InstanceState[Any] = inspect(obj)
        for capture, role in _roles(captures, state.mapper):
            if role is _Role.CART and capture._cart is not None:
                for attr in capture._cart.keys:
                    getattr(obj, attr)
                capture._note(session, role, state, "deleted")
            elif role is _Role.CART_LINE and capture._cart is not None:
                for attr in capture._cart.line_keys:
                    getattr(obj, attr)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    if not _registry:
        return
    captures = _watching(session)
    if not captures:
        return
    changes = (("new", session.new), ("dirty", session.dirty), ("deleted", session.deleted))
    for how, objects in changes:
        for obj in objects:
            state: InstanceState[Any] = instance_state(obj)
            roles = list(_roles(captures, state.mapper))
            if not roles or (
                how == "dirty" and not session.is_modified(obj, include_collections=False)
            ):
                continue
            for capture, role in roles:
                capture._note(session, role, state, how)


def _do_orm_execute(state: ORMExecuteState) -> None:
    if not _registry or not (state.is_delete or state.is_update or state.is_insert):
        return
    table = getattr(state.statement, "table", None)
    if not isinstance(table, Table):
        return
    for capture in _watching(state.session):
        for mapper, role in capture._roles.items():
            if mapper.local_table == table:
                capture._bulk(state, role)


_OWN = (_do_orm_execute,)
"""The plugin's own ``do_orm_execute`` listener: it changes no read (see ``entities``)."""


def _before_commit(session: Session) -> None:
    if not _registry or session.get_nested_transaction() is not None:
        return  # a savepoint: the outermost commit decides
    if _watching(session):
        session.flush()  # the commit would flush next; its changes are collected now
    for capture, pending in list(_pendings(session).items()):
        if pending.touched() and capture.active:
            capture._commit(session, pending)


def _after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return
    for capture, pending in list(_pendings(session).items()):
        if pending.deferred:
            capture._after_commit(pending)


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    if previous.parent is None:  # the outermost transaction: nothing of it happened
        session.info.pop(_INFO_KEY, None)
    # A savepoint's rollback keeps what was seen: at commit every cart, order and customer is
    # read again, and one that no longer exists is skipped.


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (and handled) or closed without a commit
        session.info.pop(_INFO_KEY, None)
        # the shop's transaction is over: the errors counted in it can be written now
        for capture in _registry:
            if capture._errors.waiting:
                capture._errors.flush()

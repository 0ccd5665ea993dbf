"""What a capture saw in one session's transaction until it commits or rolls back, and the
tracker calls it turns into at commit.

The pending state lives in the session's ``info``, one per capture; the calls computed from it
run inside the shop's transaction (each in a savepoint on a server database) or after the
commit with the plugin's own engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ...tracker import Tracker
from .mappings import Key

Call = Callable[["Connection | None"], None]
"""One tracker call, on the host's connection (inside its transaction) or, given None, ours."""
OnFail = Callable[["Connection | None", Exception], None]
"""What to write when a call failed (keep the order, suppress the cart), on the same terms."""


@dataclasses.dataclass(frozen=True)
class _Capture:
    """One tracker call computed at commit, and what to write if it fails."""

    mapping: str
    what: str
    call: Call
    on_fail: OnFail | None = None


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


def _pending(session: Session, capture: Hashable) -> _Pending:
    found: dict[Hashable, _Pending] = session.info.setdefault(_INFO_KEY, {})
    return found.setdefault(capture, _Pending())


def _pendings(session: Session) -> dict[Any, _Pending]:
    """Each capture's pending state in this session's transaction, by capture."""
    found: dict[Any, _Pending] = session.info.get(_INFO_KEY, {})
    return found


# -- the calls ---------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _savepoint(conn: Connection | None) -> Iterator[None]:
    """A savepoint on the host's server database connection: on PostgreSQL a failed statement
    would abort the shop's whole transaction. (SQLite undoes only the failed statement.)

    It is not released: the shop's commit follows and releases it, so a capture costs one round
    trip for it, not two. A failure rolls back to it, which undoes only what the capture wrote;
    a later savepoint of the same name hides it, as a nested one would.
    """
    if conn is None or conn.dialect.name == "sqlite":
        yield
        return
    conn.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
    try:
        yield
    except BaseException:
        conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        raise

"""The capture API: the hooks a shop calls. Each call checks its input, then writes rows only.

Capture never touches the network. Given the host's SQLAlchemy ``session=`` or
``connection=``, it writes inside the host's transaction: if the order rolls back, no event
exists. Without one it writes in a short transaction of the plugin's own engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, case, func, or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from plugin.clock import Clock, utcnow
from plugin.config import Settings
from plugin.db import make_engine, transaction, upsert
from plugin.dispatcher import Dispatcher, DispatchResult
from plugin.events import build_body, build_items_event
from plugin.items import Item, canonical_items, items_total, price_text
from plugin.models import CartState, carts
from plugin.outbox import NewEvent, Summary, enqueue, summarize
from plugin.scanner import Scanner, ScanResult
from plugin.scheduler import Scheduler
from plugin.transport import Transport
from plugin.validation import (
    ValidationError,
    check_email,
    check_event_size,
    check_host_id,
    check_text,
    check_url,
    encode_body,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
ItemsArg = Sequence[Item | dict[str, Any]]
_CURRENCY = re.compile(r"[A-Z]{3}")
_OPEN_CART_STATES = (CartState.ACTIVE.value, CartState.ABANDONED.value, CartState.SUPPRESSED.value)


class StorageError(RuntimeError):
    """The plugin could not write a captured event; the message says which and why."""


class Tracker:
    """Captures shop activity and owns the scanner, dispatcher and scheduler of one process.

    ``Tracker(Settings.from_file("config.toml"))``; under Flask, ``ShopEvents(app).tracker``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock = utcnow,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load(env=os.environ)
        self.engine = engine if engine is not None else make_engine(self.settings.database)
        self.clock = clock
        self.transport = Transport(self.settings.api, self.settings.delivery.threads, clock)
        self.scanner = Scanner(self.settings, self.engine, clock)
        self.dispatcher = Dispatcher(self.settings, self.engine, self.transport, clock)
        self.scheduler = Scheduler(self.settings.scheduler, self.scan, self.dispatcher.drain)

    def __repr__(self) -> str:
        return f"Tracker(database={self.engine.url!r}, api={self.transport!r})"

    # -- carts -------------------------------------------------------------------------------

    def cart_updated(
        self,
        cart_id: str | int,
        *,
        items: ItemsArg,
        email: str | None = None,
        currency: str | None = None,
        restore_url: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """Record the whole cart after any change; it is abandoned after ``abandoned_cart.after``.

        A cart whose products changed after its abandonment was emitted becomes a new version
        and can be emitted again (within the contact's cap). An empty list clears the cart.
        """
        cart_key = check_host_id(cart_id, "cart_id")
        checked = canonical_items(items)
        contact = check_email(email) if email is not None else None
        if currency is not None and not _CURRENCY.fullmatch(str(currency)):
            raise ValidationError("currency", f"must be a 3-letter ISO 4217 code, got {currency!r}")
        url = check_url(restore_url, "restore_url") if restore_url is not None else None
        if not checked:
            self.cart_cleared(cart_key, session=session, connection=connection)
            return
        snapshot = json.dumps(checked, ensure_ascii=False, separators=(",", ":"))
        content_hash = hashlib.sha256(f"{snapshot}|{currency or ''}".encode()).hexdigest()
        now = self.clock()

        def write(conn: Connection) -> None:
            stmt = upsert(conn, carts).values(
                cart_id=cart_key,
                email=contact,
                items=snapshot,
                currency=currency,
                restore_url=url,
                content_hash=content_hash,
                version=1,
                state=CartState.ACTIVE.value,
                skip_reason=None,
                last_activity_at=now,
                created_at=now,
            )
            new = stmt.excluded
            changed = carts.c.content_hash != new.content_hash
            newly_reachable = (carts.c.skip_reason == "no_contact") & new.email.is_not(None)
            rearm = or_(changed, carts.c.state == CartState.ACTIVE.value, newly_reachable)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[carts.c.cart_id],
                    set_={
                        "email": func.coalesce(new.email, carts.c.email),
                        "items": new["items"],
                        "currency": new.currency,
                        "restore_url": func.coalesce(new.restore_url, carts.c.restore_url),
                        "content_hash": new.content_hash,
                        "version": case((changed, carts.c.version + 1), else_=carts.c.version),
                        "state": case((rearm, CartState.ACTIVE.value), else_=carts.c.state),
                        "skip_reason": case((rearm, None), else_=carts.c.skip_reason),
                        "last_activity_at": new.last_activity_at,
                    },
                )
            )

        self._write(f"cart_updated({cart_key!r})", session, connection, write)

    def cart_cleared(
        self,
        cart_id: str | int,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The cart was emptied: nothing is emitted for it, and a queued reminder is dropped."""
        cart_key = check_host_id(cart_id, "cart_id")
        now = self.clock()
        empty = json.dumps([])

        def write(conn: Connection) -> None:
            conn.execute(
                update(carts)
                .where(carts.c.cart_id == cart_key)
                .values(
                    state=CartState.CLEARED.value,
                    items=empty,
                    content_hash=hashlib.sha256(f"{empty}|".encode()).hexdigest(),
                    version=carts.c.version + 1,
                    last_activity_at=now,
                )
            )

        self._write(f"cart_cleared({cart_key!r})", session, connection, write)

    # -- orders ------------------------------------------------------------------------------

    def order_placed(
        self,
        order_id: str | int,
        *,
        email: str,
        items: ItemsArg,
        total: Any = None,
        currency: str | None = None,
        cart_id: str | int | None = None,
        status: str = "CREATED",
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """An order: queues the order event and converts the shopper's carts.

        Every open cart of ``cart_id`` or of the same email stops being a candidate for
        abandonment, and a reminder already queued for it is dropped at send time.
        """
        order_key = check_host_id(order_id, "order_id")
        contact = check_email(email)
        checked = canonical_items(items)
        amount = price_text(total, "total") if total is not None else items_total(checked)
        if currency is not None and not _CURRENCY.fullmatch(str(currency)):
            raise ValidationError("currency", f"must be a 3-letter ISO 4217 code, got {currency!r}")
        cart_key = check_host_id(cart_id, "cart_id") if cart_id is not None else None
        order_status = check_host_id(status, "status").upper()
        flow = self.settings.orders
        tail = [("order_id", order_key), ("status", order_status), ("total", amount)]
        if currency:
            tail.append(("currency", currency))
        body, _ = build_items_event(
            flow.event_type_key, contact, [("email", contact)], checked, tail, self.settings
        )
        event = NewEvent(
            dedupe_key=f"{flow.event_type_key}:{order_key}",
            event_type_key=flow.event_type_key,
            key_value=contact,
            api_path=self.settings.api.event_path,
            body=body,
            subject_type="order",
            subject_id=order_key,
        )
        now = self.clock()

        def write(conn: Connection) -> None:
            owner = carts.c.email == contact
            if cart_key is not None:
                owner = or_(owner, carts.c.cart_id == cart_key)
            conn.execute(
                update(carts)
                .where(owner, carts.c.state.in_(_OPEN_CART_STATES))
                .values(state=CartState.CONVERTED.value, last_activity_at=now)
            )
            enqueue(conn, [event], now)

        self._write(f"order_placed({order_key!r})", session, connection, write)

    # -- anything else ------------------------------------------------------------------------

    def custom_event(
        self,
        event_type_key: str,
        *,
        key_value: str,
        params: Mapping[str, Any] | None = None,
        dedupe_key: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> str:
        """Queue any event for a workflow; returns its dedupe key.

        Param values are text, numbers, or dicts/lists (nested JSON, serialized for v1).
        Passing the same ``dedupe_key`` twice queues the event once.
        """
        body = build_body(
            event_type_key, key_value, list((params or {}).items()), self.settings.api.version
        )
        size = check_event_size(body, self.settings.api.max_event_bytes)
        key = dedupe_key or f"{event_type_key}:{uuid.uuid4()}"
        check_text(key, "dedupe_key", 400)
        event = NewEvent(
            dedupe_key=key,
            event_type_key=event_type_key,
            key_value=key_value,
            api_path=self.settings.api.event_path,
            body=encode_body(body).decode("utf-8"),
        )
        log.debug("custom event %s queued (%d bytes)", event_type_key, size)
        now = self.clock()
        self._write(
            f"custom_event({event_type_key!r})",
            session,
            connection,
            lambda conn: enqueue(conn, [event], now),
        )
        return key

    # -- passes and lifecycle ----------------------------------------------------------------

    def scan(self) -> ScanResult:
        """One abandonment scan now (the scheduler calls this every ``scan_interval``)."""
        return self.scanner.scan()

    def dispatch(self) -> DispatchResult:
        """Deliver everything due now, in bounded batches."""
        return self.dispatcher.drain()

    def summary(self) -> Summary:
        """Outbox counts by status and type, oldest pending row, last error."""
        with self.engine.connect() as conn:
            return summarize(conn)

    def stats(self) -> dict[str, int]:
        """Outbox counts by status."""
        return self.summary().by_status

    def migrate(self) -> None:
        """Create or upgrade the plugin's tables to the newest migration."""
        from plugin.migrate import upgrade

        upgrade(self.engine)

    def start(self) -> None:
        """Start the in-process scheduler (scan + dispatch jobs) in this process."""
        self.scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the scheduler; sends in progress finish, claimed rows not yet sent are released."""
        self.dispatcher.stopping.set()
        self.scheduler.shutdown(wait=wait)
        self.dispatcher.close()

    # -- internals ---------------------------------------------------------------------------

    def _write(
        self,
        what: str,
        session: Session | None,
        connection: Connection | None,
        write: Callable[[Connection], T],
    ) -> T:
        if session is not None and connection is not None:
            raise ValidationError("session", "pass session= or connection=, not both")
        self.scheduler.ensure_running()
        try:
            with transaction(self.engine, session or connection) as conn:
                return write(conn)
        except SQLAlchemyError as exc:
            log.error("%s was not recorded: %s", what, exc.__class__.__name__)
            reason = getattr(exc, "orig", None) or exc
            raise StorageError(f"{what} was not recorded: {reason}") from exc

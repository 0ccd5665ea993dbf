"""Order hooks: an order converts the shopper's cart and browse and raises order events;
optionally the order also goes to the platform's Orders API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..payload.events import Param, build_items_event
from ..payload.items import CanonicalItem, canonical_items, items_total, price_text
from ..payload.orders_api import ORDERS_API_PATH, ORDERS_API_TYPE, orders_api_order
from ..payload.validation import check_email, check_host_id, dump_json, encode_body, quoted
from ..storage import browses, carts, orders, recoveries
from ..storage.enums import Subject
from ..storage.outbox import NewEvent, enqueue
from .base import Hooks, ItemsArg, check_currency

if TYPE_CHECKING:
    from ..config import Settings

STATUS_MAX = 64
"""The length of ``shop_events_orders.status``."""


def check_status(value: object) -> str:
    """An order status, upper-cased (``delivered`` → ``DELIVERED``), at most 64 characters."""
    status = check_host_id(value, "status").upper()
    if len(status) > STATUS_MAX:
        raise ValidationError(
            "status", f"must be at most {STATUS_MAX} characters, got {len(status)}"
        )
    return status


def order_payload(
    items: list[CanonicalItem], total: str, currency: str | None, placed_at: datetime
) -> dict[str, Any]:
    """What is kept of an order (``shop_events_orders.payload``) and its events are built from."""
    return {
        "items": items,
        "total": total,
        "currency": currency,
        "placed_at": placed_at.isoformat(timespec="seconds"),
    }


def order_event_body(
    settings: Settings,
    event_type: str,
    order_id: str,
    email: str,
    status: str,
    payload: dict[str, Any],
    fields: Mapping[str, str] | None = None,
) -> str:
    """An order's Generate event body: the email, the products, then ``order_id``, ``status``,
    ``total`` and ``currency``, cut to fit the size limit; ``fields`` go beside the params."""
    items: list[CanonicalItem] = payload["items"]
    tail: list[Param] = [("order_id", order_id), ("status", status), ("total", payload["total"])]
    if payload.get("currency"):
        tail.append(("currency", payload["currency"]))
    body, _ = build_items_event(
        event_type, email, [("email", email)], items, tail, settings, fields
    )
    return body


class OrderHooks(Hooks):
    """``order_placed`` and ``order_status_changed``."""

    def order_placed(
        self,
        order_id: str | int,
        *,
        email: str,
        items: ItemsArg,
        total: Any = None,
        currency: str | None = None,
        cart_id: str | int | None = None,
        status: str = "INITIALIZED",
        user_agent: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """An order: queues its event and converts the shopper's carts and browse.

        Every open cart of ``cart_id`` or of the same email stops being a candidate for
        abandonment, and a reminder already queued for it is dropped at send time. An order
        within ``recovery.attribution_window`` after a reminder of its contact or cart was
        delivered is credited to the last one (the recovery report).
        """
        order_key = check_host_id(order_id, "order_id")
        contact = check_email(email)
        checked = canonical_items(items)
        amount = price_text(total, "total") if total is not None else items_total(checked)
        code = check_currency(currency)
        cart_key = check_host_id(cart_id, "cart_id") if cart_id is not None else None
        order_status = check_status(status)
        if self._bot(f"order_placed({order_key!r})", user_agent, contact):
            return
        now = self.clock()
        payload = order_payload(checked, amount, code, now)
        events = self._order_events(
            order_key, contact, order_status, payload, self.settings.orders.event_type_key
        )

        stored = dump_json(payload)

        def write(conn: Connection) -> None:
            carts.convert(conn, contact, cart_key)
            browses.convert(conn, contact)
            orders.store(conn, order_key, contact, order_status, stored, now)
            enqueue(conn, events, now)
            recoveries.credit(
                conn,
                order_id=order_key,
                email=contact,
                cart_id=cart_key,
                revenue=amount,
                currency=code,
                now=now,
                window=self.settings.recovery.attribution_window,
            )

        self._write(f"order_placed({order_key!r})", session, connection, write)

    def order_status_changed(
        self,
        order_id: str | int,
        *,
        status: str,
        email: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The order moved on: ``orderDelivered``, ``orderCancelled`` … by ``orders.status_events``.

        The order must have been placed through :meth:`order_placed`, or ``email`` given.
        """
        order_key = check_host_id(order_id, "order_id")
        order_status = check_status(status)
        contact = check_email(email) if email is not None else None
        event_type = self.settings.orders.event_for(order_status)
        now = self.clock()

        def write(conn: Connection) -> None:
            row = orders.get(conn, order_key)
            if row is None and contact is None:
                raise ValidationError(
                    "order_id", f"{quoted(order_key)} is unknown: place it first, or pass email="
                )
            payload = (
                json.loads(row.payload)
                if row
                else {"items": [], "total": "0", "placed_at": now.isoformat(timespec="seconds")}
            )
            to = contact or row.email
            events = self._order_events(order_key, to, order_status, payload, event_type)
            if row is not None:
                orders.set_status(conn, order_key, order_status, now)
            enqueue(conn, events, now)

        self._write(f"order_status_changed({order_key!r})", session, connection, write)

    def _order_events(
        self, order_id: str, email: str, status: str, payload: dict[str, Any], event_type: str
    ) -> list[NewEvent]:
        body = order_event_body(self.settings, event_type, order_id, email, status, payload)
        events = [
            NewEvent(
                dedupe_key=f"{event_type}:{order_id}:{status}",
                event_type_key=event_type,
                key_value=email,
                api_path=self.settings.api.event_path,
                body=body,
                subject_type=Subject.ORDER,
                subject_id=order_id,
            )
        ]
        if self.settings.orders.api:
            events.append(
                NewEvent(
                    dedupe_key=f"orders-api:{order_id}:{status}",
                    event_type_key=ORDERS_API_TYPE,
                    key_value=email,
                    api_path=ORDERS_API_PATH,
                    body=encode_body(orders_api_order(order_id, email, status, payload)).decode(),
                    subject_type=Subject.ORDER,
                    subject_id=order_id,
                )
            )
        return events

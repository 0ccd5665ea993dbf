"""A past order's outbox rows: one order for the Orders API, or its events as past events.

The bodies are live capture's own (:func:`~shop_events.payload.orders_api.orders_api_order`,
:func:`~shop_events.capture.orders.order_event_body`), with the order's time where live capture
puts the present. Each row's ``dedupe_key`` starts with :data:`KEY_PREFIX`, so a second or an
overlapping run queues nothing twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capture.orders import order_event_body, order_payload
from ..payload.orders_api import ORDERS_API_PATH, ORDERS_API_TYPE, orders_api_order
from ..payload.past_events import PAST_EVENTS_TYPE, occurred
from ..payload.validation import encode_body
from ..storage.enums import Subject
from ..storage.outbox import NewEvent
from .orders import PastOrder

if TYPE_CHECKING:
    from ..config import Settings

KEY_PREFIX = "backfill:"


def orders_api_row(order: PastOrder) -> NewEvent:
    """The order for the Orders API (``externalOrderId`` makes a re-send an update); one row per
    order and status."""
    payload = order_payload(order.items, order.total, order.currency, order.created)
    body = orders_api_order(order.order_id, order.email, order.status, payload)
    return NewEvent(
        dedupe_key=f"{KEY_PREFIX}order:{order.order_id}:{order.status}",
        event_type_key=ORDERS_API_TYPE,
        key_value=order.email,
        api_path=ORDERS_API_PATH,
        body=encode_body(body).decode("utf-8"),
        subject_type=Subject.ORDER,
        subject_id=order.order_id,
    )


def past_event_rows(order: PastOrder, settings: Settings) -> list[NewEvent]:
    """The order's events as past events, ``occurred`` at its creation: the event of its
    placement (``orders.event_type_key``, its current status as the ``status`` param), and
    when its status has an event of its own in ``orders.status_events`` (``DELIVERED`` →
    ``orderDelivered``), that one too, at the same time (the shop's models rarely keep when
    the status changed)."""
    orders = settings.orders
    types = [orders.event_type_key]
    own = orders.event_for(order.status)
    if own not in (orders.event_type_key, orders.updated_event_type_key):
        types.append(own)
    payload = order_payload(order.items, order.total, order.currency, order.created)
    fields = {"occurred": occurred(order.created, settings.backfill.zone)}
    return [
        NewEvent(
            dedupe_key=f"{KEY_PREFIX}past_event:{event_type}:{order.order_id}",
            event_type_key=PAST_EVENTS_TYPE,
            key_value=order.email,
            api_path=settings.api.past_events_path,
            body=order_event_body(
                settings, event_type, order.order_id, order.email, order.status, payload, fields
            ),
            subject_type=Subject.ORDER,
            subject_id=order.order_id,
        )
        for event_type in types
    ]

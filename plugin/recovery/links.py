"""Opening a reminder's recovery link: check the token, count the click, find the cart.

The web layer (``/shop-events/r/<token>``) calls :func:`open_link` and then restores the cart
through the shop's ``restore_cart`` callback, or redirects to where :attr:`Opened.target` says.
No address or other trait of the visitor is stored: a click is a time on the reminder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ..config import Settings
from ..payload.links import BadLink, read, with_utm
from ..storage import activity, reminders
from ..storage.enums import Subject

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Opened:
    """A valid link that was opened (and counted)."""

    cart_id: str
    step: int
    items: list[dict[str, Any]]
    """The cart as the reminder showed it (canonical items: ``name``, ``price``, ``quantity`` …)."""
    target: str
    """Where to send the visitor without a ``restore_cart`` callback, or when it returns None:
    the cart's ``restore_url``, else the shop's home, with the UTM parameters (``recovery.utm``)."""


def open_link(
    engine: Engine, settings: Settings, token: str, now: datetime, *, count: bool = True
) -> Opened:
    """Count one opening of the reminder ``token`` names and say what to restore.

    With ``count=False`` the link is checked and read but the click is not counted (a mail
    scanner or crawler prefetching it). Raises :class:`~shop_events.payload.links.BadLink` for
    a token that is tampered with, expired, or names no reminder (its reason goes to the log,
    not to the visitor).
    """
    recovery = settings.recovery
    secret = recovery.secret.reveal()
    if not secret:
        # an empty key would make any token signed with it valid
        raise BadLink("recovery.secret is not set: no link can be checked")
    link = read(secret, token, now)
    with engine.begin() as conn:
        reminder = reminders.get(conn, link.reminder)
        if reminder is None or reminder.subject_id != link.cart_id:
            raise BadLink("no such reminder (purged, or from another database)")
        if count:
            reminders.clicked(conn, link.reminder, now)
        cart = activity.get(conn, Subject.CART, link.cart_id)
    restore_url = cart.restore_url if cart is not None else None
    target = restore_url or f"{recovery.base_url.rstrip('/')}/"
    if recovery.utm:
        target = with_utm(target, reminder.event_type_key, link.step)
    items = json.loads(reminder.items) if reminder.items else []
    return Opened(cart_id=link.cart_id, step=link.step, items=items, target=target)


__all__ = ["BadLink", "Opened", "open_link"]

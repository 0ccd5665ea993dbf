"""Anonymous visitors and their email: views kept under a visitor id follow the shopper
once the visitor is identified, and an anonymous cart gets its contact.
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import Connection

from ..config import Settings
from ..payload.items import CanonicalItem
from ..storage import browses, carts, visitors
from ..storage.browses import Merge


def item_identity(item: CanonicalItem) -> str:
    """What makes two viewed products the same: SKU, else URL, else name."""
    return str(item.get("sku") or item.get("url") or item["name"])


def merge_views(
    newer: list[CanonicalItem], older: list[CanonicalItem], limit: int
) -> list[CanonicalItem]:
    """Most recent first, each product once, at most ``limit``."""
    seen: set[str] = set()
    merged = []
    for item in [*newer, *older]:
        identity = item_identity(item)
        if identity not in seen:
            seen.add(identity)
            merged.append(item)
    return merged[:limit]


def view_merger(settings: Settings) -> Merge:
    """:func:`merge_views` bounded by ``abandoned_browse.max_items``."""
    return functools.partial(merge_views, limit=settings.abandoned_browse.max_items)


def link_visitor(
    conn: Connection, settings: Settings, visitor_id: str, email: str, now: datetime
) -> None:
    """Remember who the visitor is, give their anonymous carts the email, and move their
    views to the email's browse.
    """
    visitors.remember(conn, visitor_id, email, now)
    carts.give_email(conn, visitor_id, email)
    browses.follow_contact(conn, visitor_id, email, view_merger(settings))

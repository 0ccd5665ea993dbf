"""Anonymous visitors and their email: views kept under a visitor id follow the shopper
once the visitor is identified, and an anonymous cart gets its contact.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, delete, insert, select, update

from ..config import Settings
from ..payload.items import CanonicalItem
from ..payload.validation import dump_json
from ..storage.engines import upsert
from ..storage.enums import FlowState
from ..storage.tables import browses, carts, visitors

OPEN_STATES = (FlowState.ACTIVE.value, FlowState.ABANDONED.value, FlowState.SUPPRESSED.value)
MAX_RETRIES = 5


def email_key(email: str) -> str:
    """The browse key of a known contact."""
    return f"e:{email}"


def visitor_key(visitor_id: str) -> str:
    """The browse key of a visitor not yet identified."""
    return f"v:{visitor_id}"


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


def known_email(conn: Connection, visitor_id: str) -> str | None:
    """The contact this visitor was identified as, if any."""
    found: str | None = conn.execute(
        select(visitors.c.email).where(visitors.c.visitor_id == visitor_id)
    ).scalar()
    return found


def link_visitor(
    conn: Connection, settings: Settings, visitor_id: str, email: str, now: datetime
) -> None:
    """Remember who the visitor is, give their anonymous carts the email, and move their
    views to the email's browse.
    """
    remembered = upsert(conn, visitors).values(visitor_id=visitor_id, email=email, updated_at=now)
    conn.execute(
        remembered.on_conflict_do_update(
            index_elements=[visitors.c.visitor_id], set_={"email": email, "updated_at": now}
        )
    )
    reachable = (carts.c.state == FlowState.SUPPRESSED.value) & (
        carts.c.skip_reason == "no_contact"
    )
    conn.execute(
        update(carts)
        .where(carts.c.visitor_id == visitor_id, carts.c.email.is_(None))
        .values(
            email=email,
            state=case((reachable, FlowState.ACTIVE.value), else_=carts.c.state),
            skip_reason=case((reachable, None), else_=carts.c.skip_reason),
        )
    )
    anonymous = conn.execute(
        select(browses).where(browses.c.browse_key == visitor_key(visitor_id))
    ).first()
    if anonymous is None:
        return
    known = conn.execute(select(browses).where(browses.c.browse_key == email_key(email))).first()
    conn.execute(delete(browses).where(browses.c.browse_key == visitor_key(visitor_id)))
    if known is None:
        values = dict(anonymous._mapping)
        values.update(browse_key=email_key(email), email=email)
        if values["state"] == FlowState.SUPPRESSED.value and values["skip_reason"] == "no_contact":
            values.update(state=FlowState.ACTIVE.value, skip_reason=None)
        conn.execute(insert(browses).values(**values))
        return
    limit = settings.abandoned_browse.max_items
    newer, older = sorted((anonymous, known), key=lambda r: r.last_activity_at, reverse=True)
    items = merge_views(json.loads(newer.items), json.loads(older.items), limit)
    active = FlowState.ACTIVE.value in (anonymous.state, known.state)
    conn.execute(
        update(browses)
        .where(browses.c.browse_key == email_key(email))
        .values(
            items=dump_json(items),
            visitor_id=visitor_id,
            last_activity_at=newer.last_activity_at,
            started_at=min(anonymous.started_at, known.started_at),
            **_rearmed(known, active),
        )
    )


def _rearmed(known: Any, active: bool) -> dict[str, Any]:
    if not active or known.state == FlowState.ACTIVE.value:
        return {}
    return {"state": FlowState.ACTIVE.value, "version": known.version + 1, "skip_reason": None}

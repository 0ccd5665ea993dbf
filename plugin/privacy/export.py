"""Access on request: one JSON document with everything the plugin holds about an address.

The rows are those an erasure would delete (:mod:`.erasure`), whole, one object per row with
its columns as stored: times in ISO 8601 (UTC), JSON text (cart items, registration params,
order payloads, event bodies) decoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ..storage import (
    browses,
    caps,
    capture_errors,
    carts,
    consent,
    kept_captures,
    orders,
    outbox,
    pause,
    recoveries,
    registrations,
    reminders,
    visitors,
)
from .person import find, normalized

FORMAT = 1
"""The document's version (``format``), raised when its shape changes."""


def document(engine: Engine, email: object, now: datetime) -> dict[str, Any]:
    """Everything held about ``email`` (case and surrounding spaces do not matter), as of
    ``now``; ``ValidationError`` when it is not an address.

    ``activity``: carts, browses, registrations, orders and identity links (``visitors``);
    ``events``: outbox rows of every status with their bodies; ``consent``: the consent history,
    oldest first; ``reminders``: reminders queued for the person with their delivery and clicks;
    ``recoveries``: orders credited to a reminder; ``caps``: when each marketing flow last went
    to them; ``mentions``: failed-capture messages, kept captures and shared states that quote
    the address.
    """
    address = normalized(email)
    with engine.connect() as conn:
        person = find(conn, address)
        return {
            "format": FORMAT,
            "email": address,
            "exported_at": now.isoformat(),
            "activity": {
                "carts": rows(carts.held(conn, person), "items"),
                "browses": rows(browses.held(conn, person), "items"),
                "registrations": rows(registrations.held(conn, person), "params"),
                "orders": rows(orders.held(conn, person), "payload"),
                "visitors": rows(visitors.held(conn, person)),
            },
            "events": rows(outbox.held(conn, person), "body"),
            "consent": consent.history(conn, address),
            "reminders": rows(reminders.held(conn, person), "items"),
            "recoveries": rows(recoveries.held(conn, person)),
            "caps": rows(caps.held(conn, person)),
            "mentions": {
                "capture_errors": rows(capture_errors.held(conn, person)),
                "kept_captures": rows(kept_captures.held(conn, person)),
                "state": rows(pause.mentioning(conn, person)),
            },
        }


def rows(found: Iterable[Any], *json_columns: str) -> list[dict[str, Any]]:
    """Rows as JSON-ready objects, the ``json_columns`` decoded (kept as text if they are not
    JSON)."""
    return [
        {
            name: _decoded(value) if name in json_columns else _plain(value)
            for name, value in row._mapping.items()
        }
        for row in found
    ]


def _decoded(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value

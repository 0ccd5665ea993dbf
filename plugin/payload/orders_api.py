"""The Orders API's format: one order as ``POST /v1/orders`` takes it (pure, no I/O)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ValidationError

ORDERS_API_PATH = "v1/orders"
ORDERS_API_TYPE = "orders_api"
"""The outbox's ``event_type_key`` of a row bound for the Orders API."""


def orders_api_order(
    order_id: str, email: str, status: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """One order in the Orders API's format (``/v1/orders``; re-sending an id updates it).

    Unlike event params, this API takes amounts and quantities as JSON numbers.
    """
    order: dict[str, Any] = {
        "externalOrderId": order_id,
        "externalCustomerId": email,
        "email": email,
        "status": status,
        "totalCost": _amount(payload["total"], "total"),
        "date": payload["placed_at"],
        "items": [
            {
                "externalItemId": item.get("sku") or item.get("url") or item["name"],
                "name": item["name"],
                "cost": _amount(item["price"], f"items[{i}].price"),
                "quantity": int(item.get("quantity", "1")),
                **({"url": item["url"]} if "url" in item else {}),
                **({"imageUrl": item["imageurl"]} if "imageurl" in item else {}),
            }
            for i, item in enumerate(payload["items"])
        ],
    }
    if payload.get("currency"):
        order["currency"] = payload["currency"]
    return order


def _amount(text: str, field: str) -> float:
    """An amount as a JSON number; one too big for a float would be written ``Infinity``."""
    number = float(text)
    if not math.isfinite(number):
        raise ValidationError(field, f"is too large for the Orders API, got {text[:20]}…")
    return number

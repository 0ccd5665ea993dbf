"""Who a privacy request is about: the address as the tables hold it, and the keys of its rows."""

from __future__ import annotations

from sqlalchemy import Connection

from ..payload.validation import check_email
from ..storage import carts, orders, visitors
from ..storage.person import Person


def normalized(email: object) -> str:
    """The address as captures store it: surrounding spaces dropped, lower-case
    (``payload.validation.check_email``); ``ValidationError`` when it is not an address."""
    return check_email(email.strip() if isinstance(email, str) else email)


def find(conn: Connection, email: str) -> Person:
    """The person with the normalised address ``email``: the visitors identified as it, the
    carts of either, the orders it placed."""
    visitor_ids = visitors.identified_as(conn, email)
    return Person(
        email=email,
        visitor_ids=visitor_ids,
        cart_ids=carts.owned_by(conn, email, visitor_ids),
        order_ids=orders.placed_by(conn, email),
    )

"""Cart hooks: the whole cart after every change, and its clearing."""

from __future__ import annotations

import functools
import hashlib
import json

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    bindparam,
    case,
    func,
    literal_column,
    null,
    or_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..payload.items import canonical_items
from ..payload.validation import check_email, check_host_id, check_url, dump_json
from ..storage.enums import FlowState
from ..storage.tables import UTCDateTime, carts
from .base import Hooks, ItemsArg, check_currency
from .identity import link_visitor

EMPTY = json.dumps([])
EMPTY_HASH = hashlib.sha256(f"{EMPTY}|".encode()).hexdigest()


class CartHooks(Hooks):
    """``cart_updated`` and ``cart_cleared``."""

    def cart_updated(
        self,
        cart_id: str | int,
        *,
        items: ItemsArg,
        email: str | None = None,
        visitor_id: str | None = None,
        currency: str | None = None,
        restore_url: str | None = None,
        user_agent: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """Record the whole cart after any change; it is abandoned after ``abandoned_cart.after``.

        A cart whose products changed after its abandonment was emitted becomes a new version
        and can be emitted again (within the contact's cap). An empty list clears the cart.
        With both ``email`` and ``visitor_id``, the visitor's earlier activity joins the email.
        """
        cart_key = check_host_id(cart_id, "cart_id")
        checked = canonical_items(items)
        contact = check_email(email) if email is not None else None
        visitor = check_host_id(visitor_id, "visitor_id") if visitor_id is not None else None
        code = check_currency(currency)
        url = check_url(restore_url, "restore_url") if restore_url is not None else None
        if self._bot(f"cart_updated({cart_key!r})", user_agent, contact):
            return
        if not checked:
            self.cart_cleared(cart_key, session=session, connection=connection)
            return
        snapshot = dump_json(checked)
        content_hash = hashlib.sha256(f"{snapshot}|{code or ''}".encode()).hexdigest()
        now = self.clock()

        row = {
            "cart_id": cart_key,
            "email": contact,
            "visitor_id": visitor,
            "items": snapshot,
            "currency": code,
            "restore_url": url,
            "content_hash": content_hash,
            "now": now,
        }

        def write(conn: Connection) -> None:
            conn.execute(_cart_upsert(conn.dialect.name), row)
            if contact and visitor:
                link_visitor(conn, self.settings, visitor, contact, now)

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

        def write(conn: Connection) -> None:
            conn.execute(
                update(carts)
                .where(carts.c.cart_id == cart_key)
                .values(
                    state=FlowState.CLEARED.value,
                    items=EMPTY,
                    content_hash=EMPTY_HASH,
                    version=carts.c.version + 1,
                    last_activity_at=now,
                )
            )

        self._write(f"cart_cleared({cart_key!r})", session, connection, write)


@functools.cache
def _cart_upsert(dialect: str) -> Executable:
    """The cart upsert, built once per dialect: building it costs more than running it.

    A changed cart becomes a new version and (again) ``active``; an unchanged one only records
    the activity, so a shopper who looks at an abandoned cart does not re-arm it.
    """
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(carts)
    now = bindparam("now", type_=UTCDateTime)
    # constants are written into the SQL, so each call binds only the cart's own values
    active: ColumnElement[str] = literal_column(f"'{FlowState.ACTIVE.value}'")
    stmt = insert.values(
        {
            **{name: bindparam(name) for name in _CART_PARAMS},
            "version": literal_column("1"),
            "state": active,
            "skip_reason": null(),
            "last_activity_at": now,
            "created_at": now,
        }
    )
    new = stmt.excluded
    changed = carts.c.content_hash != new.content_hash
    no_contact: ColumnElement[str] = literal_column("'no_contact'")
    newly_reachable = (carts.c.skip_reason == no_contact) & new.email.is_not(None)
    rearm = or_(changed, carts.c.state == active, newly_reachable)
    upserted: Executable = stmt.on_conflict_do_update(
        index_elements=[carts.c.cart_id],
        set_={
            "email": func.coalesce(new.email, carts.c.email),
            "visitor_id": func.coalesce(new.visitor_id, carts.c.visitor_id),
            "items": new["items"],
            "currency": new.currency,
            "restore_url": func.coalesce(new.restore_url, carts.c.restore_url),
            "content_hash": new.content_hash,
            "version": case(
                (changed, carts.c.version + literal_column("1")),
                else_=carts.c.version,
            ),
            "state": case((rearm, active), else_=carts.c.state),
            "skip_reason": case((rearm, null()), else_=carts.c.skip_reason),
            "last_activity_at": new.last_activity_at,
        },
    )
    return upserted


_CART_PARAMS = (
    "cart_id",
    "email",
    "visitor_id",
    "items",
    "currency",
    "restore_url",
    "content_hash",
)

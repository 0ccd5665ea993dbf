"""Cart hooks: the whole cart after every change, and its clearing."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import Connection, case, func, or_, update
from sqlalchemy.orm import Session

from plugin.db import upsert
from plugin.hooks import Hooks, ItemsArg, check_currency
from plugin.identity import link_visitor
from plugin.items import canonical_items
from plugin.models import CartState, carts
from plugin.validation import check_email, check_host_id, check_url

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
        snapshot = json.dumps(checked, ensure_ascii=False, separators=(",", ":"))
        content_hash = hashlib.sha256(f"{snapshot}|{code or ''}".encode()).hexdigest()
        now = self.clock()

        def write(conn: Connection) -> None:
            stmt = upsert(conn, carts).values(
                cart_id=cart_key,
                email=contact,
                visitor_id=visitor,
                items=snapshot,
                currency=code,
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
                        "visitor_id": func.coalesce(new.visitor_id, carts.c.visitor_id),
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
                    state=CartState.CLEARED.value,
                    items=EMPTY,
                    content_hash=EMPTY_HASH,
                    version=carts.c.version + 1,
                    last_activity_at=now,
                )
            )

        self._write(f"cart_cleared({cart_key!r})", session, connection, write)

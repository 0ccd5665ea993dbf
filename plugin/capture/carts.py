"""Cart hooks: the whole cart after every change, and its clearing."""

from __future__ import annotations

import logging

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ..errors import StorageError, ValidationError
from ..payload.items import canonical_items
from ..payload.validation import check_email, check_host_id, check_url, dump_json
from ..storage import carts
from .base import Hooks, ItemsArg, check_currency
from .identity import link_visitor

log = logging.getLogger(__name__)


class CartHooks(Hooks):
    """``cart_updated``, ``cart_rejected`` and ``cart_cleared``."""

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

        Refused data raises :class:`ValidationError` and also suppresses the cart recorded
        before (:meth:`cart_rejected`): a state the shop no longer shows is never reminded.
        """
        cart_key = check_host_id(cart_id, "cart_id")
        try:
            checked = canonical_items(items)
            contact = check_email(email) if email is not None else None
            visitor = check_host_id(visitor_id, "visitor_id") if visitor_id is not None else None
            code = check_currency(currency)
            url = check_url(restore_url, "restore_url") if restore_url is not None else None
        except ValidationError as exc:
            try:
                self.cart_rejected(cart_key, session=session, connection=connection)
            except StorageError as failed:
                log.error("cart_updated(%r) refused (%s); %s", cart_key, exc, failed)
            raise
        if self._bot(f"cart_updated({cart_key!r})", user_agent, contact):
            return
        if not checked:
            self.cart_cleared(cart_key, session=session, connection=connection)
            return
        snapshot = dump_json(checked)
        now = self.clock()

        def write(conn: Connection) -> None:
            carts.record(
                conn,
                cart_id=cart_key,
                email=contact,
                visitor_id=visitor,
                items=snapshot,
                currency=code,
                restore_url=url,
                now=now,
            )
            if contact and visitor:
                link_visitor(conn, self.settings, visitor, contact, now)

        self._write(f"cart_updated({cart_key!r})", session, connection, write)

    def cart_rejected(
        self,
        cart_id: str | int,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> bool:
        """The cart's current state could not be captured: it is not reminded with an older one.

        The cart is ``suppressed`` (reason ``invalid``) until the next valid :meth:`cart_updated`
        re-arms it; a reminder already queued is dropped at send time. False when the plugin
        had no open cart of that id.
        """
        cart_key = check_host_id(cart_id, "cart_id")
        now = self.clock()
        return self._write(
            f"cart_rejected({cart_key!r})",
            session,
            connection,
            lambda conn: carts.reject(conn, cart_key, now),
        )

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
        self._write(
            f"cart_cleared({cart_key!r})",
            session,
            connection,
            lambda conn: carts.clear(conn, cart_key, now),
        )

"""Browse hooks: product views, and telling the plugin who an anonymous visitor is."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..payload.items import Item, canonical_item
from ..payload.validation import check_email, check_host_id
from ..storage import browses, visitors
from .base import Hooks
from .identity import link_visitor, view_merger


class BrowseHooks(Hooks):
    """``product_viewed`` and ``identify``."""

    def product_viewed(
        self,
        *,
        item: Item | dict[str, object],
        email: str | None = None,
        visitor_id: str | None = None,
        user_agent: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """A product page was seen by a contact (``email``) or an anonymous ``visitor_id``.

        Without a cart or an order within ``abandoned_browse.after``, the viewed products (most
        recent first, no repeats, at most ``max_items``) become one ``abandoned_browse`` event.
        """
        if email is None and visitor_id is None:
            raise ValidationError("email", "product_viewed needs email= or visitor_id=")
        contact = check_email(email) if email is not None else None
        visitor = check_host_id(visitor_id, "visitor_id") if visitor_id is not None else None
        viewed = canonical_item(item, "item")
        if self._bot("product_viewed", user_agent, contact):
            return
        now = self.clock()

        def write(conn: Connection) -> None:
            if contact and visitor:
                link_visitor(conn, self.settings, visitor, contact, now)
            # a visitor identified earlier keeps browsing as that contact
            email = contact or visitors.known_email(conn, str(visitor))
            key = browses.email_key(email) if email else browses.visitor_key(str(visitor))
            merge = view_merger(self.settings)
            browses.record_view(conn, key, email, visitor, viewed, merge, now)

        self._write("product_viewed", session, connection, write)

    def identify(
        self,
        visitor_id: str,
        email: str,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The anonymous visitor is this contact (e.g. at login): their activity follows."""
        visitor = check_host_id(visitor_id, "visitor_id")
        contact = check_email(email)
        now = self.clock()
        self._write(
            "identify",
            session,
            connection,
            lambda conn: link_visitor(conn, self.settings, visitor, contact, now),
        )

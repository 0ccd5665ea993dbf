"""Browse hooks: product views, and telling the plugin who an anonymous visitor is."""

from __future__ import annotations

import json

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from ..errors import StorageError, ValidationError
from ..payload.items import Item, canonical_item
from ..payload.validation import check_email, check_host_id, dump_json
from ..storage.engines import upsert
from ..storage.enums import FlowState
from ..storage.tables import browses
from .base import Hooks
from .identity import (
    MAX_RETRIES,
    email_key,
    known_email,
    link_visitor,
    merge_views,
    visitor_key,
)


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
        limit = self.settings.abandoned_browse.max_items
        now = self.clock()

        def write(conn: Connection) -> None:
            if contact and visitor:
                link_visitor(conn, self.settings, visitor, contact, now)
            # a visitor identified earlier keeps browsing as that contact
            email = contact or known_email(conn, str(visitor))
            key = email_key(email) if email else visitor_key(str(visitor))
            for _ in range(MAX_RETRIES):
                row = conn.execute(select(browses).where(browses.c.browse_key == key)).first()
                if row is None:
                    inserted = conn.execute(
                        upsert(conn, browses)
                        .values(
                            browse_key=key,
                            email=email,
                            visitor_id=visitor,
                            items=_dump([viewed]),
                            version=1,
                            state=FlowState.ACTIVE.value,
                            started_at=now,
                            last_activity_at=now,
                        )
                        .on_conflict_do_nothing(index_elements=[browses.c.browse_key])
                        .returning(browses.c.browse_key)
                    ).first()
                    if inserted is not None:
                        return
                    continue
                values: dict[str, object]
                if row.state == FlowState.ACTIVE.value:
                    values = {"items": _dump(merge_views([viewed], json.loads(row.items), limit))}
                else:  # a new browse after the last one ended
                    values = {
                        "items": _dump([viewed]),
                        "version": row.version + 1,
                        "state": FlowState.ACTIVE.value,
                        "skip_reason": None,
                        "started_at": now,
                    }
                changed = conn.execute(
                    update(browses)
                    .where(
                        browses.c.browse_key == key,
                        browses.c.version == row.version,
                        browses.c.last_activity_at == row.last_activity_at,
                    )
                    .values(last_activity_at=now, visitor_id=row.visitor_id or visitor, **values)
                )
                if changed.rowcount:
                    return
            raise StorageError(f"product_viewed: the browse of {key!r} kept changing; try again")

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


def _dump(items: list[dict[str, object]]) -> str:
    return dump_json(items)

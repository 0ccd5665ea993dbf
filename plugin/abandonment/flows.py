"""The abandonment flows: abandoned cart, abandoned browse, unfinished registration.

Each flow names its table, its settings and its event; the scanner and the send-time check
treat all three alike. A row is ``active`` until it comes due, then ``abandoned`` (with an event
queued for that version) or ``suppressed`` (nothing to send: no contact, opted out, capped).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, and_, exists, or_, select

from ..config import FlowSettings, Settings
from ..payload.events import Param, build_items_event
from ..payload.items import items_total
from ..payload.validation import encode_body
from ..storage.enums import FlowState
from ..storage.outbox import NewEvent
from ..storage.tables import browses, carts, consent, registrations

Row = Any
MARKETING_SUBJECTS = frozenset({"cart", "browse", "registration", "marketing"})
"""Outbox subjects that are marketing: never sent to a contact who opted out."""


@dataclasses.dataclass(frozen=True)
class Flow(abc.ABC):
    """One abandonment flow; subclasses say what its event holds and what cancels it."""

    subject: str
    table: Table
    key: Column[str]
    settings: FlowSettings
    app: Settings

    def contact(self, row: Row) -> str | None:
        """The email the event goes to, if known."""
        return row.email  # type: ignore[no-any-return]

    def cancelled(self, conn: Connection, row: Row) -> str:
        """Why this due row must not be emitted although it is still active ('' if none)."""
        return ""

    @abc.abstractmethod
    def event(self, row: Row) -> NewEvent:
        """The event for this row at its current version."""

    def new_event(self, row: Row, body: str) -> NewEvent:
        """Wrap a finished body with this flow's dedupe key and subject."""
        key_value = str(self.contact(row))
        return NewEvent(
            dedupe_key=f"{self.settings.event_type_key}:{row._mapping[self.key.name]}:{row.version}",
            event_type_key=self.settings.event_type_key,
            key_value=key_value,
            api_path=self.app.api.event_path,
            body=body,
            subject_type=self.subject,
            subject_id=str(row._mapping[self.key.name]),
            subject_version=int(row.version),
        )


class CartFlow(Flow):
    """An idle cart → ``abandoned_cart`` with its products, total, currency and restore URL."""

    def event(self, row: Row) -> NewEvent:
        items = json.loads(row.items)
        tail: list[Param] = [("cart_id", row.cart_id), ("total", items_total(items))]
        if row.currency:
            tail.append(("currency", row.currency))
        if row.restore_url:
            tail.append(("cart_url", row.restore_url))
        body, _ = build_items_event(
            self.settings.event_type_key, row.email, [("email", row.email)], items, tail, self.app
        )
        return self.new_event(row, body)


class BrowseFlow(Flow):
    """Products viewed, then neither carted nor ordered → ``abandoned_browse``."""

    def cancelled(self, conn: Connection, row: Row) -> str:
        owner = [carts.c.email == row.email] if row.email else []
        if row.visitor_id:
            owner.append(carts.c.visitor_id == row.visitor_id)
        if not owner:
            return ""
        carted = conn.execute(
            select(exists().where(or_(*owner), carts.c.last_activity_at >= row.started_at))
        ).scalar()
        return "the shopper added to the cart" if carted else ""

    def event(self, row: Row) -> NewEvent:
        items = json.loads(row.items)
        body, _ = build_items_event(
            self.settings.event_type_key, row.email, [("email", row.email)], items, [], self.app
        )
        return self.new_event(row, body)


class RegistrationFlow(Flow):
    """A sign-up started and not completed → ``unfinished_registration`` with its params."""

    def event(self, row: Row) -> NewEvent:
        from ..payload.events import build_body

        params: list[Param] = [("email", row.email), *json.loads(row.params)]
        body = build_body(self.settings.event_type_key, row.email, params, self.app.api.version)
        return self.new_event(row, encode_body(body).decode("utf-8"))


def flows(settings: Settings) -> list[Flow]:
    """The three flows, configured."""
    return [
        CartFlow("cart", carts, carts.c.cart_id, settings.abandoned_cart, settings),
        BrowseFlow("browse", browses, browses.c.browse_key, settings.abandoned_browse, settings),
        RegistrationFlow(
            "registration",
            registrations,
            registrations.c.email,
            settings.unfinished_registration,
            settings,
        ),
    ]


def opted_out(conn: Connection, emails: Iterable[str]) -> set[str]:
    """Which of these contacts withdrew consent to marketing."""
    wanted = {email.lower() for email in emails}
    if not wanted:
        return set()
    return set(
        conn.execute(
            select(consent.c.email).where(consent.c.email.in_(wanted), consent.c.opted_out)
        ).scalars()
    )


_GONE = {
    FlowState.CONVERTED.value: "the shopper placed an order",
    FlowState.CLEARED.value: "the cart was emptied",
    FlowState.COMPLETED.value: "the registration was completed",
}


def unwanted(
    conn: Connection,
    settings: Settings,
    subject_type: str | None,
    subject_id: str | None,
    subject_version: int | None,
    key_value: str,
) -> str:
    """Why a queued event must not go out any more ('' when it still should).

    Checked right before sending: an order, a change, a completed sign-up or an opt-out since
    the event was queued supersedes it.
    """
    if subject_type in MARKETING_SUBJECTS and opted_out(conn, [key_value]):
        return "the contact opted out of marketing"
    flow = next((f for f in flows(settings) if f.subject == subject_type), None)
    if flow is None:
        return ""
    row = conn.execute(select(flow.table).where(flow.key == subject_id)).first()
    if row is None:
        return f"the {subject_type} no longer exists"
    if row.state in _GONE:
        return _GONE[row.state]
    if row.version != subject_version:
        return f"the {subject_type} changed (version {subject_version} → {row.version})"
    return flow.cancelled(conn, row)


def due_condition(flow: Flow, now: datetime) -> Any:
    """Rows of the flow idle for at least its ``after``."""
    return and_(
        flow.table.c.state == FlowState.ACTIVE.value,
        flow.table.c.last_activity_at <= now - flow.settings.after,
    )

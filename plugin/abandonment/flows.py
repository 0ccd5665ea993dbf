"""The abandonment flows: abandoned cart, abandoned browse, unfinished registration.

Each flow names its subject (and so its table), its settings and its event; the scanner and
the send-time check treat all three alike. A row is ``active`` until it comes due, then
``abandoned`` (with an event queued for that version) or ``suppressed`` (nothing to send: no
contact, opted out, capped).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from typing import Any

from sqlalchemy import Connection

from ..config import FlowSettings, Settings
from ..payload.events import Param, build_body, build_items_event
from ..payload.items import items_total
from ..payload.validation import encode_body
from ..storage import activity, carts, consent
from ..storage.enums import FlowState, SkipReason, Subject
from ..storage.outbox import NewEvent

Row = Any


@dataclasses.dataclass(frozen=True)
class Flow(abc.ABC):
    """One abandonment flow; subclasses say what its event holds and what cancels it."""

    subject: Subject
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
        key = activity.key_of(self.subject, row)
        return NewEvent(
            dedupe_key=f"{self.settings.event_type_key}:{key}:{row.version}",
            event_type_key=self.settings.event_type_key,
            key_value=str(self.contact(row)),
            api_path=self.app.api.event_path,
            body=body,
            subject_type=self.subject,
            subject_id=key,
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
        carted = carts.carted_since(conn, row.email, row.visitor_id, row.started_at)
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
        params: list[Param] = [("email", row.email), *json.loads(row.params)]
        body = build_body(self.settings.event_type_key, row.email, params, self.app.api.version)
        return self.new_event(row, encode_body(body).decode("utf-8"))


def flows(settings: Settings) -> list[Flow]:
    """The three flows, configured."""
    return [
        CartFlow(Subject.CART, settings.abandoned_cart, settings),
        BrowseFlow(Subject.BROWSE, settings.abandoned_browse, settings),
        RegistrationFlow(Subject.REGISTRATION, settings.unfinished_registration, settings),
    ]


_SUBJECTS = frozenset(s.value for s in Subject)
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
    subject = Subject(subject_type) if subject_type in _SUBJECTS else None
    if subject is not None and subject.is_marketing and consent.opted_out(conn, [key_value]):
        return "the contact opted out of marketing"
    flow = next((f for f in flows(settings) if f.subject == subject), None)
    if flow is None or subject_id is None:
        return ""
    row = activity.get(conn, flow.subject, subject_id)
    if row is None:
        return f"the {subject_type} no longer exists"
    if row.state in _GONE:
        return _GONE[row.state]
    if row.state == FlowState.SUPPRESSED.value and row.skip_reason == SkipReason.INVALID.value:
        return f"the {subject_type}'s current state could not be captured"
    if row.version != subject_version:
        return f"the {subject_type} changed (version {subject_version} → {row.version})"
    return flow.cancelled(conn, row)

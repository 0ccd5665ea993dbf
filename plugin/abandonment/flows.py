"""The abandonment flows: abandoned cart, abandoned browse, unfinished registration.

Each flow names its subject (and so its table), its settings and its event; the scanner and
the send-time check treat all three alike. A row is ``active`` until it comes due, then
``abandoned`` (with an event queued for that version) or ``suppressed`` (nothing to send: no
contact, opted out, capped). With several ``steps``, an ``abandoned`` row gets each next
reminder when it comes due, as long as nothing (an order, a change, an opt-out) ended it.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ..config import FlowSettings, Settings
from ..payload.events import STEP_PARAM, Param, build_body, build_items_event
from ..payload.items import items_total
from ..payload.links import Link, link_url, sign
from ..payload.validation import encode_body
from ..storage import activity, carts, consent
from ..storage.enums import FlowState, SkipReason, Subject
from ..storage.outbox import NewEvent
from ..storage.reminders import NewReminder

Row = Any


@dataclasses.dataclass(frozen=True)
class Step:
    """One reminder of a sequence being queued: its number (from 1), when, and its coupon."""

    number: int
    now: datetime
    coupon: str | None = None


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

    def dedupe_key(self, row: Row, step: int) -> str:
        """The key of this row's reminder ``step`` at its current version."""
        key = activity.key_of(self.subject, row)
        return f"{self.settings.event_type_key}:{key}:{row.version}:{step}"

    @abc.abstractmethod
    def event(self, row: Row, step: Step) -> NewEvent:
        """The event of reminder ``step`` for this row at its current version."""

    def reminder(self, row: Row, event: NewEvent, step: Step) -> NewReminder:
        """What the recovery report and the links remember of the reminder ``event``."""
        return NewReminder(
            dedupe_key=event.dedupe_key,
            flow=self.subject.value,
            event_type_key=self.settings.event_type_key,
            subject_id=activity.key_of(self.subject, row),
            subject_version=int(row.version),
            step=step.number,
            email=event.key_value,
            coupon=step.coupon,
        )

    def new_event(self, row: Row, body: str, step: Step) -> NewEvent:
        """Wrap a finished body with this flow's dedupe key and subject."""
        return NewEvent(
            dedupe_key=self.dedupe_key(row, step.number),
            event_type_key=self.settings.event_type_key,
            key_value=str(self.contact(row)),
            api_path=self.app.api.event_path,
            body=body,
            subject_type=self.subject,
            subject_id=activity.key_of(self.subject, row),
            subject_version=int(row.version),
        )


class CartFlow(Flow):
    """An idle cart → ``abandoned_cart`` with its products, total, currency, restore URL (or a
    signed recovery link to it) and, for some steps, a coupon."""

    def event(self, row: Row, step: Step) -> NewEvent:
        items = json.loads(row.items)
        tail: list[Param] = [("cart_id", row.cart_id), ("total", items_total(items))]
        if row.currency:
            tail.append(("currency", row.currency))
        cart_url = self.cart_url(row, step)
        if cart_url:
            tail.append(("cart_url", cart_url))
        tail.append((STEP_PARAM, str(step.number)))
        if step.coupon:
            tail.append(("coupon", step.coupon))
        body, _ = build_items_event(
            self.settings.event_type_key, row.email, [("email", row.email)], items, tail, self.app
        )
        return self.new_event(row, body, step)

    def cart_url(self, row: Row, step: Step) -> str | None:
        """Where the reminder's button leads: the signed recovery link with ``recovery.links``
        (it redirects on, with the UTM parameters), else the cart's restore URL as given."""
        recovery = self.app.recovery
        if recovery.links:
            link = Link(
                reminder=self.dedupe_key(row, step.number),
                cart_id=row.cart_id,
                step=step.number,
                expires_at=step.now + recovery.link_ttl,
            )
            return link_url(recovery.base_url, sign(recovery.secret.reveal(), link))
        return row.restore_url  # type: ignore[no-any-return]

    def reminder(self, row: Row, event: NewEvent, step: Step) -> NewReminder:
        """A cart's reminder also keeps the cart as the email shows it, to restore it."""
        return dataclasses.replace(super().reminder(row, event, step), items=row.items)


class BrowseFlow(Flow):
    """Products viewed, then neither carted nor ordered → ``abandoned_browse``."""

    def cancelled(self, conn: Connection, row: Row) -> str:
        carted = carts.carted_since(conn, row.email, row.visitor_id, row.started_at)
        return "the shopper added to the cart" if carted else ""

    def event(self, row: Row, step: Step) -> NewEvent:
        items = json.loads(row.items)
        tail: list[Param] = [(STEP_PARAM, str(step.number))]
        body, _ = build_items_event(
            self.settings.event_type_key, row.email, [("email", row.email)], items, tail, self.app
        )
        return self.new_event(row, body, step)


class RegistrationFlow(Flow):
    """A sign-up started and not completed → ``unfinished_registration`` with its params."""

    def event(self, row: Row, step: Step) -> NewEvent:
        # a param of that name is refused at capture; one stored before that rule yields
        given = [(name, value) for name, value in json.loads(row.params) if name != STEP_PARAM]
        params: list[Param] = [("email", row.email), *given, (STEP_PARAM, str(step.number))]
        body = build_body(self.settings.event_type_key, row.email, params, self.app.api.version)
        return self.new_event(row, encode_body(body).decode("utf-8"), step)


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
    step: int | None = None,
) -> str:
    """Why a queued event must not go out any more ('' when it still should).

    Checked right before sending: an order, a change, a completed sign-up or an opt-out since
    the event was queued supersedes it; so does a later ``step`` of the same reminder sequence
    queued meanwhile (after a pause in delivery the shopper gets the newest reminder, not every
    step at once).
    """
    subject = Subject(subject_type) if subject_type in _SUBJECTS else None
    if subject is not None and subject.is_marketing:
        refusal = consent.reason(conn, key_value, settings.consent.mode)
        if refusal is not None:
            return refusal
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
    if step is not None and row.step > step:
        return f"a later reminder (step {row.step}) of the {subject_type} replaced it"
    return flow.cancelled(conn, row)


def step_of(dedupe_key: str) -> int | None:
    """The step of a reminder from its dedupe key (see :meth:`Flow.dedupe_key`), or None for a
    key of another form."""
    last = dedupe_key.rsplit(":", 1)[-1]
    return int(last) if last.isascii() and last.isdigit() else None

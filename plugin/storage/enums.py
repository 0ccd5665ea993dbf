"""The domain's words, as stored in the tables: one enum each, never a bare string elsewhere."""

from __future__ import annotations

from enum import StrEnum


class FlowState(StrEnum):
    """Where a cart, a browse or a registration stands; only ``active`` rows are scanned."""

    ACTIVE = "active"
    ABANDONED = "abandoned"
    """Came due, and its event was queued for this version."""
    CONVERTED = "converted"
    """An order (or, for a browse, a cart) made the reminder pointless."""
    CLEARED = "cleared"
    """The cart was emptied."""
    COMPLETED = "completed"
    """A registration that was finished."""
    SUPPRESSED = "suppressed"
    """Came due but nothing was emitted; ``skip_reason`` says why."""


OPEN_STATES = (FlowState.ACTIVE, FlowState.ABANDONED, FlowState.SUPPRESSED)
"""States an order still converts (and a visitor's identification still reaches)."""
FINISHED_STATES = (
    FlowState.ABANDONED,
    FlowState.CONVERTED,
    FlowState.CLEARED,
    FlowState.COMPLETED,
    FlowState.SUPPRESSED,
)
"""States retention may delete once they are old enough."""


class SkipReason(StrEnum):
    """Why a due row emitted nothing (``skip_reason``)."""

    NO_CONTACT = "no_contact"
    OPTED_OUT = "opted_out"
    """The contact refused marketing: opted out, suppressed after an erasure, or, with
    ``consent.mode = "opt-in"``, never opted in."""
    CAPPED = "capped"
    CANCELLED = "cancelled"
    UNBUILDABLE = "unbuildable"
    """Its event could not be built (too large, malformed stored data): logged with the error."""
    INVALID = "invalid"
    """The cart's current state could not be captured (refused or unreadable): its older state
    is not reminded until a valid one arrives. The error is counted in the capture errors."""


class OutboxStatus(StrEnum):
    """Where an outbox row stands."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    DEAD = "dead"
    SUPERSEDED = "superseded"


class Subject(StrEnum):
    """What an outbox row is about (``subject_type``): decides the send-time checks."""

    CART = "cart"
    BROWSE = "browse"
    REGISTRATION = "registration"
    ORDER = "order"
    CONTACT = "contact"
    """A contact's own events (created, updated, signed in, password): ``subject_id`` is the
    email. Transactional: sent whatever the contact's marketing consent."""
    MARKETING = "marketing"
    """A custom event sent as marketing: never to a contact who opted out."""

    @property
    def is_marketing(self) -> bool:
        """Never sent to a contact who withdrew marketing consent."""
        return self not in (Subject.ORDER, Subject.CONTACT)


MARKETING_SUBJECTS = tuple(s for s in Subject if s.is_marketing)
"""The subjects that are marketing, for queries over ``subject_type``."""

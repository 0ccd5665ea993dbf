"""Consent to marketing: each contact's history of opt-ins and opt-outs, its latest decision,
and the suppressions of addresses erased on request.

The history is appended to and never rewritten; the latest entry decides (kept in
``shop_events_consent`` so that the scan reads one row per contact). A suppression holds no
address, only its HMAC-SHA256 under a random salt made once per database and kept in
``shop_events_state``: it is matched by hashing the addresses asked about, and an opt-in lifts
it.

Emails reach these functions normalised (``payload.validation.check_email``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import get_args

from sqlalchemy import Connection, delete, insert, select

from ..config.sections import ConsentMode
from ..errors import ValidationError
from . import pause
from .engines import upsert
from .tables import consent, consent_history, suppressions

TABLE = consent.name
HISTORY_TABLE = consent_history.name
SUPPRESSIONS_TABLE = suppressions.name

MODES: tuple[ConsentMode, ...] = get_args(ConsentMode)
OPT_IN: ConsentMode = "opt-in"
"""The mode that sends marketing only to contacts whose latest entry is an opt-in."""

SALT = "consent_salt"
"""The ``shop_events_state`` row holding the suppressions' salt."""


def record(
    conn: Connection,
    email: str,
    opted_in: bool,
    now: datetime,
    *,
    source: str | None = None,
    basis: str | None = None,
) -> None:
    """Append an opt-in (``opted_in=True``) or opt-out to the contact's history and make it
    the latest decision; an opt-in also lifts a suppression after an erasure."""
    conn.execute(
        insert(consent_history).values(
            email=email, opted_in=opted_in, source=source, basis=basis, at=now
        )
    )
    opted_out = not opted_in
    values = {"email": email, "opted_out": opted_out, "updated_at": now}
    conn.execute(upsert(conn, consent, values, update={"opted_out": opted_out, "updated_at": now}))
    if opted_in:
        salt = pause.kept_value(conn, SALT)
        if salt is not None:
            conn.execute(delete(suppressions).where(suppressions.c.hash == _digest(salt, email)))


def refused(conn: Connection, emails: Iterable[str], mode: str) -> set[str]:
    """Which of these contacts must not get marketing: those who opted out, those suppressed
    after an erasure and, in ``"opt-in"`` mode, every contact whose latest entry is not an
    opt-in. The addresses are returned as given."""
    check_mode(mode)
    given = {email.lower(): email for email in emails}
    if not given:
        return set()
    decided = dict(
        conn.execute(
            select(consent.c.email, consent.c.opted_out).where(consent.c.email.in_(given))
        ).all()
    )
    out = {
        email
        for email in given
        if refusal(decided.get(email), suppressed=False, mode=mode) is not None
    }
    out |= _suppressed(conn, set(given) - out)
    return {given[email] for email in out}


def refusal(opted_out: bool | None, *, suppressed: bool, mode: str) -> str | None:
    """Why a contact must not get marketing, or None when it may: ``opted_out`` is its latest
    decision (None without any), ``suppressed`` whether an erasure suppressed it."""
    if suppressed:
        return "suppressed after an erasure request, until the contact opts in again"
    if opted_out:
        return "the contact opted out of marketing"
    if opted_out is None and mode == OPT_IN:
        return "no opt-in recorded (consent.mode is opt-in)"
    return None


def is_suppressed(conn: Connection, email: str) -> bool:
    """Whether an erasure suppressed this address and it has not opted in since."""
    return bool(_suppressed(conn, {email.lower()}))


def suppress(conn: Connection, email: str, now: datetime) -> None:
    """Block marketing to this address until it opts in again, keeping only its salted hash
    (the salt is made on the first suppression)."""
    salt = pause.keep_value(conn, SALT, secrets.token_hex(32), now)
    values = {"hash": _digest(salt, email), "created_at": now}
    conn.execute(upsert(conn, suppressions, values))


def forget(conn: Connection, email: str) -> dict[str, int]:
    """Delete this address's latest decision and history; rows deleted per table. A
    suppression stays: it holds no address."""
    return {
        table.name: conn.execute(delete(table).where(table.c.email == email)).rowcount
        for table in (consent, consent_history)
    }


def history(conn: Connection, email: str) -> list[dict[str, object]]:
    """The contact's entries, oldest first: ``at`` (ISO 8601, UTC), ``opted_in``, ``source``
    and ``basis`` (None when not given)."""
    rows = conn.execute(
        select(
            consent_history.c.at,
            consent_history.c.opted_in,
            consent_history.c.source,
            consent_history.c.basis,
        )
        .where(consent_history.c.email == email)
        .order_by(consent_history.c.id)
    )
    return [
        {
            "at": row.at.isoformat(),
            "opted_in": row.opted_in,
            "source": row.source,
            "basis": row.basis,
        }
        for row in rows
    ]


@dataclasses.dataclass(frozen=True)
class ConsentStatus:
    """One contact's consent as ``shop-events consent`` shows it."""

    email: str
    mode: str
    history: list[dict[str, object]]
    """The entries, oldest first (see :func:`history`)."""
    suppressed: bool
    """An erasure suppressed the address and it has not opted in since."""
    refusal: str | None
    """Why no marketing goes to the contact under ``mode``; None when it may."""

    def as_json(self) -> dict[str, object]:
        """The status as plain JSON values: ``marketing`` says whether it may be sent."""
        return {
            "email": self.email,
            "mode": self.mode,
            "history": self.history,
            "suppressed": self.suppressed,
            "marketing": self.refusal is None,
            "refusal": self.refusal,
        }


def status(conn: Connection, email: str, mode: str) -> ConsentStatus:
    """The contact's history and whether marketing may go to them under ``mode``."""
    check_mode(mode)
    opted_out, suppressed = _decision(conn, email)
    return ConsentStatus(
        email=email,
        mode=mode,
        history=history(conn, email),
        suppressed=suppressed,
        refusal=refusal(opted_out, suppressed=suppressed, mode=mode),
    )


def reason(conn: Connection, email: str, mode: str) -> str | None:
    """Why no marketing may go to this contact under ``mode``; None when it may."""
    check_mode(mode)
    opted_out, suppressed = _decision(conn, email)
    return refusal(opted_out, suppressed=suppressed, mode=mode)


def _decision(conn: Connection, email: str) -> tuple[bool | None, bool]:
    """The contact's latest ``opted_out`` (None without any entry) and whether suppressed."""
    opted_out = conn.execute(select(consent.c.opted_out).where(consent.c.email == email)).scalar()
    return opted_out, is_suppressed(conn, email)


def check_mode(mode: str) -> None:
    """Refuse a consent mode other than ``"opt-out"`` and ``"opt-in"``."""
    if mode not in MODES:
        raise ValidationError("consent.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")


def _suppressed(conn: Connection, emails: set[str]) -> set[str]:
    """Which of these (lower-case) addresses are suppressed."""
    salt = pause.kept_value(conn, SALT) if emails else None
    if salt is None:  # nothing was ever suppressed
        return set()
    digests = {_digest(salt, email): email for email in emails}
    found = conn.execute(select(suppressions.c.hash).where(suppressions.c.hash.in_(digests)))
    return {digests[digest] for digest in found.scalars()}


def _digest(salt: str, email: str) -> str:
    """The address's suppression key: HMAC-SHA256 of its lower-case form under ``salt``."""
    return hmac.new(salt.encode("ascii"), email.lower().encode("utf-8"), hashlib.sha256).hexdigest()

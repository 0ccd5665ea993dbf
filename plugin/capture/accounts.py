"""Account hooks: sign-ups, logins, passwords, contact data and consent.

Logins, password events and contact updates are transactional: they are sent even to contacts
who opted out of marketing. An unfinished registration is a marketing flow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..payload.consent import check_basis, check_source
from ..payload.contacts import check_name, check_phone, profile_inputs
from ..payload.events import STEP_PARAM, Param, build_body
from ..payload.validation import check_email, check_event_size, check_url, quoted
from ..storage import caps, consent, outbox, registrations
from ..storage.enums import Subject
from .base import HookParams, Hooks, check_params


class AccountHooks(Hooks):
    """Registration, login, password, contact and consent hooks."""

    # -- registration ------------------------------------------------------------------------

    def registration_started(
        self,
        email: str,
        *,
        user_agent: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
        params: HookParams = None,
    ) -> None:
        """A sign-up began; without :meth:`registration_completed` within
        ``unfinished_registration.after`` it becomes an ``unfinished_registration`` event
        carrying ``email`` and ``params``.
        """
        contact = check_email(email)
        pairs = check_params(params)
        if any(name == STEP_PARAM for name, _ in pairs):
            raise ValidationError(
                f"params.{STEP_PARAM}",
                "is reserved for the reminder's step number (1, 2, …); give yours another name",
            )
        flow = self.settings.unfinished_registration
        # the event is checked now (with its last step's number), so a bad param fails here
        # and not at scan time
        last_step = (STEP_PARAM, str(len(flow.delays)))
        check_event_size(
            build_body(
                flow.event_type_key,
                contact,
                [("email", contact), *pairs, last_step],
                self.settings.api.version,
            ),
            self.settings.api.max_event_bytes,
        )
        if self._bot("registration_started", user_agent, contact):
            return
        stored = json.dumps(pairs, ensure_ascii=False, default=str)
        now = self.clock()

        self._write(
            "registration_started",
            session,
            connection,
            lambda conn: registrations.start(conn, contact, stored, now),
        )

    def registration_completed(
        self,
        email: str,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The sign-up finished: no reminder is sent, and a queued one is dropped."""
        contact = check_email(email)
        now = self.clock()
        self._write(
            "registration_completed",
            session,
            connection,
            lambda conn: registrations.complete(conn, contact, now),
        )

    # -- login and password (transactional) --------------------------------------------------

    def logged_in(
        self,
        email: str,
        *,
        user_agent: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
        params: HookParams = None,
    ) -> None:
        """A login: queues ``events.login`` at once, with ``params`` besides the email."""
        pairs = check_params(params)
        login = self.settings.events.login
        self._account_event("logged_in", login, email, pairs, user_agent, session, connection)

    def password_changed(
        self,
        email: str,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
        params: HookParams = None,
    ) -> None:
        """A password change: queues ``events.password_change`` at once."""
        self._account_event(
            "password_changed",
            self.settings.events.password_change,
            email,
            check_params(params),
            None,
            session,
            connection,
        )

    def password_reset_requested(
        self,
        email: str,
        *,
        reset_url: str,
        session: Session | None = None,
        connection: Connection | None = None,
        params: HookParams = None,
    ) -> None:
        """A reset was asked for: queues ``events.password_reset`` with ``reset_url``."""
        url = check_url(reset_url, "reset_url")
        self._account_event(
            "password_reset_requested",
            self.settings.events.password_reset,
            email,
            [("reset_url", url), *check_params(params)],
            None,
            session,
            connection,
        )

    def _account_event(
        self,
        what: str,
        event_type: str,
        email: str,
        pairs: list[Param],
        user_agent: str | None,
        session: Session | None,
        connection: Connection | None,
    ) -> None:
        contact = check_email(email)
        event = self._immediate_event(
            event_type,
            contact,
            [("email", contact), *pairs],
            subject_type=Subject.CONTACT,
            subject_id=contact,
        )
        if not self._bot(what, user_agent, contact):
            self._queue(what, [event], session, connection)

    # -- contacts (transactional) ------------------------------------------------------------

    def contact_upserted(
        self,
        email: str,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        phone: str | None = None,
        fields: Mapping[int | str, Any] | None = None,
        created: bool = False,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """Create (``created=True``) or update a contact: ``create_contact``/``update_contact``
        with ``email``, the names and phone, and ``json`` holding the additional fields.

        Every value is checked first: the platform would silently ignore the whole contact.
        """
        contact = check_email(email)
        rules = self.settings.contacts
        params: list[Param] = [("email", contact)]
        if first_name is not None:
            params.append(("firstName", check_name(first_name, "first_name", rules)))
        if last_name is not None:
            params.append(("lastName", check_name(last_name, "last_name", rules)))
        if phone is not None:
            params.append(("phone", check_phone(phone, rules)))
        if fields:
            params.append(("json", {"profileInputs": profile_inputs(fields, rules)}))
        if not isinstance(created, bool):
            raise ValidationError("created", f"must be True or False, got {quoted(created)}")
        keys = self.settings.events
        event_type = keys.create_contact if created else keys.update_contact
        event = self._immediate_event(
            event_type, contact, params, subject_type=Subject.CONTACT, subject_id=contact
        )
        self._queue("contact_upserted", [event], session, connection)

    # -- consent -----------------------------------------------------------------------------

    def opted_out(
        self,
        email: str,
        *,
        source: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The contact withdrew marketing consent: an opt-out entry in their consent history
        (``source``: where, e.g. ``"unsubscribe link"``). Marketing flows skip them, and their
        queued marketing events are superseded. Transactional events still go out.
        """
        contact = check_email(email)
        where = check_source(source)
        now = self.clock()

        def write(conn: Connection) -> None:
            consent.record(conn, contact, False, now, source=where)
            for event_type_key, queued_at in outbox.supersede_marketing(conn, contact):
                # never sent: it does not use up the contact's cap
                caps.give_back(conn, event_type_key, contact, queued_at)

        self._write("opted_out", session, connection, write)

    def opted_in(
        self,
        email: str,
        *,
        source: str | None = None,
        basis: str | None = None,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The contact (again) accepts marketing: an opt-in entry in their consent history, with
        where it was given (``source``, e.g. ``"checkout checkbox"``) and its lawful basis
        (``basis``: ``"consent"``, ``"contract"``, ``"legitimate_interests"`` or another of
        GDPR Art. 6(1)). It lifts a suppression left by an erasure request.
        """
        contact = check_email(email)
        where = check_source(source)
        lawful = check_basis(basis)
        now = self.clock()
        self._write(
            "opted_in",
            session,
            connection,
            lambda conn: consent.record(conn, contact, True, now, source=where, basis=lawful),
        )

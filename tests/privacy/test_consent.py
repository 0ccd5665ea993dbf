"""Consent: a history of opt-ins and opt-outs where the latest decides, the two consent modes at
scan and at send time, suppression after an erasure, ``shop-events consent`` and migration 0006.

Time moves with freezegun; the receiver is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner, Result
from freezegun.api import FrozenDateTimeFactory
from shop_events import Item, Tracker, ValidationError
from shop_events.cli import cli, flask_group
from shop_events.storage import consent
from shop_events.storage.migrate import alembic_config, upgrade
from shop_events.storage.tables import (
    carts,
    consent_history,
    runtime_state,
    suppressions,
)
from shop_events.storage.tables import consent as consent_table
from shop_events.testing import Receiver
from sqlalchemy import Engine, create_engine, select, text

from tests.support import SettingsFactory, TrackerFactory, outbox_rows, trackers, write_config

ANN = "ann@example.com"
BOB = "bob@example.com"
HOUR = timedelta(hours=1)
LAMP = Item(name="Lamp", price="30")


@pytest.fixture
def make_tracker(make_settings: SettingsFactory) -> Iterator[TrackerFactory]:
    with trackers(make_settings, abandoned_cart={"contact_interval": "0s"}) as make:
        yield make


def types_sent(receiver: Receiver) -> list[str]:
    return sorted(f"{e['eventTypeKey']}:{e['keyValue']}" for e in receiver.events)


def cart_outcome(tracker: Tracker, cart_id: str) -> tuple[str, str | None]:
    with tracker.engine.connect() as conn:
        row = conn.execute(select(carts).where(carts.c.cart_id == cart_id)).one()
    return row.state, row.skip_reason


def refused(tracker: Tracker, *emails: str, mode: str = "opt-out") -> set[str]:
    with tracker.engine.connect() as conn:
        return consent.refused(conn, emails, mode)


def suppress(tracker: Tracker, email: str) -> None:
    """What an erasure request leaves behind (``privacy.suppress_after_forget``)."""
    with tracker.engine.begin() as conn:
        consent.forget(conn, email)
        consent.suppress(conn, email, tracker.clock())


# ---------------------------------------------------------------------------------- history


def test_every_call_is_appended_to_the_history_and_the_latest_decides(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.opted_in(ANN, source="checkout checkbox", basis="consent")
    assert refused(tracker, ANN, mode="opt-in") == set()
    clock.tick(HOUR)
    tracker.opted_out("Ann@Example.com", source="unsubscribe link")
    assert refused(tracker, ANN) == refused(tracker, ANN, mode="opt-in") == {ANN}
    clock.tick(HOUR)
    tracker.opted_in(ANN, source="account page", basis="legitimate_interests")
    assert refused(tracker, ANN, mode="opt-in") == set()

    with tracker.engine.connect() as conn:
        entries = consent.history(conn, ANN)
    assert entries == [
        {
            "at": "2026-11-26T10:00:00+00:00",
            "opted_in": True,
            "source": "checkout checkbox",
            "basis": "consent",
        },
        {
            "at": "2026-11-26T11:00:00+00:00",
            "opted_in": False,
            "source": "unsubscribe link",
            "basis": None,
        },
        {
            "at": "2026-11-26T12:00:00+00:00",
            "opted_in": True,
            "source": "account page",
            "basis": "legitimate_interests",
        },
    ]


def test_calls_without_source_or_basis_are_recorded_too(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.opted_out(ANN)
    with tracker.engine.connect() as conn:
        [entry] = consent.history(conn, ANN)
    assert (entry["opted_in"], entry["source"], entry["basis"]) == (False, None, None)


def test_refused_answers_for_many_contacts_as_they_were_given(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.opted_in(ANN)
    tracker.opted_out(BOB)
    never = "cid@example.com"
    assert refused(tracker, ANN, "BOB@example.com", never) == {"BOB@example.com"}
    assert refused(tracker, ANN, BOB, never, mode="opt-in") == {BOB, never}
    assert refused(tracker, mode="opt-in") == set()


def test_forgetting_deletes_the_decision_and_the_history_and_counts_them(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.opted_in(ANN)
    tracker.opted_out(ANN)
    tracker.opted_in(BOB)
    with tracker.engine.begin() as conn:
        counts = consent.forget(conn, ANN)
    assert counts == {"shop_events_consent": 1, "shop_events_consent_history": 2}
    with tracker.engine.connect() as conn:
        assert consent.history(conn, ANN) == []
        assert len(consent.history(conn, BOB)) == 1
        left = conn.execute(select(consent_table.c.email)).scalars().all()
    assert left == [BOB]


# ---------------------------------------------------------------------------------- modes


def test_opt_out_mode_reminds_a_contact_who_never_decided(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP])
    tracker.cart_updated("cart-bob", email=BOB, items=[LAMP])
    tracker.opted_out(BOB)
    clock.tick(2 * HOUR)
    tracker.scan()
    tracker.dispatch()
    assert types_sent(receiver) == [f"abandoned_cart:{ANN}"]
    assert cart_outcome(tracker, "cart-bob") == ("suppressed", "opted_out")


def test_opt_in_mode_reminds_only_contacts_who_opted_in_and_still_sends_transactional_events(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(consent={"mode": "opt-in"})
    tracker.opted_in(BOB, source="newsletter form", basis="consent")
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP])
    tracker.cart_updated("cart-bob", email=BOB, items=[LAMP])
    clock.tick(2 * HOUR)
    assert tracker.scan().suppressed == 1
    assert cart_outcome(tracker, "cart-ann") == ("suppressed", "opted_out")
    tracker.logged_in(ANN)
    tracker.order_placed("order-1", email=ANN, items=[LAMP])
    tracker.dispatch()
    assert types_sent(receiver) == [
        f"abandoned_cart:{BOB}",
        f"login:{ANN}",
        f"orderCreated:{ANN}",
    ]


def test_opt_in_mode_reminds_once_the_contact_opts_in(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(consent={"mode": "opt-in"})
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP])
    clock.tick(2 * HOUR)
    assert tracker.scan().suppressed == 1
    tracker.opted_in(ANN, source="checkout checkbox", basis="consent")
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP, LAMP])
    clock.tick(2 * HOUR)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert types_sent(receiver) == [f"abandoned_cart:{ANN}"]


def test_opt_in_mode_holds_back_marketing_queued_for_a_contact_without_an_opt_in_at_send_time(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(consent={"mode": "opt-in"})
    tracker.custom_event("wishlist_reminder", key_value=ANN, params={"n": 1}, marketing=True)
    tracker.custom_event("invoice_ready", key_value=ANN, params={"n": 2})
    result = tracker.dispatch()
    assert (result.sent, result.superseded) == (1, 1)
    assert types_sent(receiver) == [f"invoice_ready:{ANN}"]
    [held] = [r for r in outbox_rows(tracker.engine) if r.status == "superseded"]
    assert held.event_type_key == "wishlist_reminder"
    assert held.last_error == "no opt-in recorded (consent.mode is opt-in)"


def test_an_opt_out_after_the_reminder_was_queued_holds_it_back_in_opt_in_mode(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker(consent={"mode": "opt-in"})
    tracker.opted_in(ANN)
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP])
    clock.tick(2 * HOUR)
    assert tracker.scan().abandoned == 1
    with tracker.engine.begin() as conn:  # as if the opt-out's supersede missed the row
        consent.record(conn, ANN, False, tracker.clock())
    assert tracker.dispatch().superseded == 1
    assert receiver.requests == []


# ---------------------------------------------------------------------------- suppression


@pytest.mark.parametrize("mode", ["opt-out", "opt-in"])
def test_a_suppressed_address_gets_no_marketing_until_it_opts_in_again(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory, mode: str
) -> None:
    tracker = make_tracker(consent={"mode": mode})
    tracker.opted_in(ANN)
    suppress(tracker, ANN)
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP])
    tracker.custom_event("wishlist_reminder", key_value=ANN, params={"n": 1}, marketing=True)
    clock.tick(2 * HOUR)
    assert tracker.scan().suppressed == 1
    tracker.logged_in(ANN)
    tracker.dispatch()
    assert types_sent(receiver) == [f"login:{ANN}"]
    [held] = [r for r in outbox_rows(tracker.engine) if r.status == "superseded"]
    assert held.last_error == (
        "suppressed after an erasure request, until the contact opts in again"
    )

    tracker.opted_in("ANN@example.com", source="newsletter form", basis="consent")
    assert refused(tracker, ANN, mode=mode) == set()
    tracker.cart_updated("cart-ann", email=ANN, items=[LAMP, LAMP])
    clock.tick(2 * HOUR)
    assert tracker.scan().abandoned == 1
    tracker.dispatch()
    assert f"abandoned_cart:{ANN}" in types_sent(receiver)


def test_an_opt_out_does_not_lift_a_suppression(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    suppress(tracker, ANN)
    tracker.opted_out(ANN)
    with tracker.engine.connect() as conn:
        assert consent.is_suppressed(conn, ANN)


def test_a_suppression_keeps_only_a_salted_hash_under_one_salt(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    suppress(tracker, ANN)
    suppress(tracker, BOB)
    suppress(tracker, ANN)  # twice is once
    with tracker.engine.connect() as conn:
        hashes = conn.execute(select(suppressions.c.hash)).scalars().all()
        salts = conn.execute(
            select(runtime_state.c.value).where(runtime_state.c.name == consent.SALT)
        ).scalars()
        [salt] = salts.all()
        assert consent.is_suppressed(conn, ANN) and consent.is_suppressed(conn, BOB)
        assert not consent.is_suppressed(conn, "cid@example.com")
    assert len(hashes) == 2
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
    assert salt and len(salt) == 64
    for email in (ANN, BOB):
        assert not any(email in h or "ann" in h for h in hashes)
        assert email not in salt


def test_nothing_is_suppressed_before_the_first_suppression(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    assert refused(tracker, ANN) == set()
    tracker.opted_in(ANN)  # an opt-in with nothing to lift makes no salt
    with tracker.engine.connect() as conn:
        state = conn.execute(select(runtime_state.c.name)).scalars().all()
    assert consent.SALT not in state


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "kwargs", "field", "rule"),
    [
        ("opted_in", {"basis": "concent"}, "basis", "did you mean 'consent'?"),
        ("opted_in", {"basis": "legitimate_interest"}, "basis", "'legitimate_interests'?"),
        ("opted_in", {"basis": "because"}, "basis", "must be one of consent, contract"),
        ("opted_in", {"basis": ""}, "basis", "must not be empty"),
        ("opted_in", {"basis": 6}, "basis", "must be a string"),
        ("opted_in", {"source": "x" * 201}, "source", "at most 200 characters"),
        ("opted_out", {"source": "form\nBcc: x"}, "source", "one line"),
        ("opted_out", {"source": "  "}, "source", "must not be empty"),
        ("opted_out", {"source": ["form"]}, "source", "must be a string"),
        ("opted_in", {"email": "not an address"}, "email", "not a valid email"),
    ],
)
def test_bad_source_basis_or_email_is_refused_naming_the_field_and_nothing_is_recorded(
    make_tracker: TrackerFactory,
    clock: FrozenDateTimeFactory,
    call: str,
    kwargs: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    tracker = make_tracker()
    given = dict(kwargs)
    email = given.pop("email", ANN)
    with pytest.raises(ValidationError) as caught:
        getattr(tracker, call)(email, **given)
    assert caught.value.field == field
    assert rule in caught.value.rule
    with tracker.engine.connect() as conn:
        assert conn.execute(select(consent_history)).all() == []


def test_every_lawful_basis_is_accepted(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    bases = [
        "consent",
        "contract",
        "legal_obligation",
        "vital_interests",
        "public_task",
        "legitimate_interests",
    ]
    for basis in bases:
        tracker.opted_in(ANN, basis=basis)
    with tracker.engine.connect() as conn:
        assert [e["basis"] for e in consent.history(conn, ANN)] == bases


def test_storage_refuses_an_unknown_mode(
    make_tracker: TrackerFactory, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    with tracker.engine.connect() as conn, pytest.raises(ValidationError) as caught:
        consent.refused(conn, [ANN], "optin")
    assert caught.value.field == "consent.mode"


# --------------------------------------------------------------------------------------- CLI

Invoke = Callable[..., Result]


@pytest.fixture
def cli_tracker(
    make_tracker: TrackerFactory, database_url: str, tmp_path: Path, receiver: Receiver
) -> Iterator[tuple[Tracker, Path]]:
    """A tracker in opt-in mode and a settings file for the command on the same database."""
    tracker = make_tracker(consent={"mode": "opt-in"})
    config = write_config(
        tmp_path / "shop.toml",
        {
            "api": {"base_url": receiver.base_url, "key": receiver.api_key},
            "database": {"url": database_url},
            "scheduler": {"enabled": False},
            "consent": {"mode": "opt-in"},
        },
    )
    yield tracker, config


@pytest.fixture
def invoke(cli_tracker: tuple[Tracker, Path], monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.delenv("SHOP_EVENTS_CONSENT_MODE", raising=False)
    _, config = cli_tracker

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config), *args])

    return run


def test_the_command_prints_the_history_oldest_first_and_the_decision(
    cli_tracker: tuple[Tracker, Path], invoke: Invoke, clock: FrozenDateTimeFactory
) -> None:
    tracker, _ = cli_tracker
    tracker.opted_in(ANN, source="checkout checkbox", basis="consent")
    clock.tick(HOUR)
    tracker.opted_out(ANN, source="unsubscribe link")
    result = invoke("consent", " Ann@Example.com ")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"consent of {ANN} (consent.mode = opt-in)",
        "  2026-11-26T10:00:00+00:00  opted in   source: checkout checkbox; basis: consent",
        "  2026-11-26T11:00:00+00:00  opted out  source: unsubscribe link",
        "marketing: refused (the contact opted out of marketing)",
    ]
    clock.tick(HOUR)
    tracker.opted_in(ANN)
    assert invoke("consent", ANN).output.splitlines()[-2:] == [
        "  2026-11-26T12:00:00+00:00  opted in",
        "marketing: allowed",
    ]


def test_the_command_says_when_nothing_is_recorded_and_when_suppressed(
    cli_tracker: tuple[Tracker, Path], invoke: Invoke, clock: FrozenDateTimeFactory
) -> None:
    tracker, _ = cli_tracker
    assert invoke("consent", ANN).output.splitlines() == [
        f"consent of {ANN} (consent.mode = opt-in)",
        "  no opt-in or opt-out recorded",
        "marketing: refused (no opt-in recorded (consent.mode is opt-in))",
    ]
    suppress(tracker, BOB)
    printed = json.loads(invoke("consent", BOB, "--json").stdout)
    assert printed == {
        "email": BOB,
        "mode": "opt-in",
        "history": [],
        "suppressed": True,
        "marketing": False,
        "refusal": "suppressed after an erasure request, until the contact opts in again",
    }


def test_the_json_output_holds_the_history_and_the_decision(
    cli_tracker: tuple[Tracker, Path], invoke: Invoke, clock: FrozenDateTimeFactory
) -> None:
    tracker, _ = cli_tracker
    tracker.opted_in(ANN, source="checkout checkbox", basis="contract")
    result = invoke("consent", "--json", ANN)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    with tracker.engine.connect() as conn:
        assert printed["history"] == consent.history(conn, ANN)
    assert printed["history"][0]["basis"] == "contract"
    assert (printed["marketing"], printed["refusal"], printed["suppressed"]) == (True, None, False)


def test_the_command_refuses_a_bad_address(invoke: Invoke) -> None:
    result = invoke("consent", "not an address")
    assert result.exit_code == 2
    assert "EMAIL" in result.output and "is not a valid email address" in result.output


def test_the_flask_group_has_the_consent_command_too() -> None:
    assert flask_group.commands["consent"] is cli.commands["consent"]


# -------------------------------------------------------------------------------- migration


@pytest.fixture
def engine(empty_database_url: str) -> Iterator[Engine]:
    made = create_engine(empty_database_url)
    yield made
    made.dispose()


def test_migration_0006_turns_each_recorded_decision_into_a_history_entry(engine: Engine) -> None:
    upgrade(engine, "0005")
    with engine.begin() as conn:
        for email, opted_out, at in (
            (ANN, True, "2026-11-20 10:00:00.250000"),
            (BOB, False, "2026-11-21 09:30:00"),
        ):
            conn.execute(
                text(
                    "INSERT INTO shop_events_consent (email, opted_out, updated_at)"
                    " VALUES (:email, :opted_out, :at)"
                ),
                {"email": email, "opted_out": opted_out, "at": at},
            )
    upgrade(engine)
    with engine.connect() as conn:
        assert consent.history(conn, ANN) == [
            {
                "at": "2026-11-20T10:00:00.250000+00:00",
                "opted_in": False,
                "source": "before consent history",
                "basis": None,
            }
        ]
        assert consent.history(conn, BOB)[0]["opted_in"] is True
        assert consent.refused(conn, [ANN, BOB], "opt-in") == {ANN}
        assert consent.refused(conn, [ANN, BOB], "opt-out") == {ANN}


def test_migration_0006_goes_down_and_up_again(engine: Engine) -> None:
    upgrade(engine)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(select(consent_history)).all() == []

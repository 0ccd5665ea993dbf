"""Access on request: ``tracker.export`` returns every row the plugin holds about an address,
whole, and nothing about anyone else; checked here against the tables, row by row.

Runs on SQLite, PostgreSQL and MariaDB; time moves with freezegun; the receiver is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from shop_events import Tracker, ValidationError
from shop_events.storage.tables import (
    browses,
    caps,
    carts,
    consent_history,
    orders,
    outbox,
    recoveries,
    registrations,
    reminders,
    visitors,
)
from shop_events.testing import Receiver
from sqlalchemy import Table, select

from tests.support import (
    TrackerFactory,
    held_everywhere,
    queue_pending,
)

ANN = "ann@example.com"
BOB = "bob@example.com"
Row = dict[str, Any]


def table_rows(tracker: Tracker, table: Table, *json_columns: str) -> list[Row]:
    """Every row of ``table`` as the export writes one: times in ISO 8601, JSON text decoded."""
    with tracker.engine.connect() as conn:
        found = conn.execute(select(table)).mappings().all()
    return [
        {
            name: json.loads(value)
            if name in json_columns
            else value.isoformat()
            if isinstance(value, datetime)
            else value
            for name, value in row.items()
        }
        for row in found
    ]


def about(email: str, tag: str) -> Callable[[Row], bool]:
    """Whether a row is the person's: it names their address (in any case, anywhere) or one of
    their keys (``tag`` names their carts, order and visitor)."""
    keys = {f"cart-{tag}", f"anonymous-{tag}", f"order-{tag}", f"visitor-{tag}"}

    def theirs(row: Row) -> bool:
        return email in json.dumps(row).lower() or not keys.isdisjoint(map(str, row.values()))

    return theirs


def by_key(rows: list[Row]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def test_the_export_holds_every_row_of_the_person_whole_and_nothing_of_anyone_else(
    make_tracker: TrackerFactory, receiver: Receiver, clock: FrozenDateTimeFactory
) -> None:
    tracker = make_tracker()
    held_everywhere(tracker, receiver, clock, ANN, "a")
    held_everywhere(tracker, receiver, clock, BOB, "b")
    queue_pending(tracker, ANN)
    queue_pending(tracker, BOB)
    document = tracker.export("  Ann@Example.com ")
    assert (document["format"], document["email"]) == (1, ANN)
    assert document["exported_at"] == tracker.clock().isoformat()
    sections = {
        "carts": (document["activity"]["carts"], carts, ("items",)),
        "browses": (document["activity"]["browses"], browses, ("items",)),
        "registrations": (document["activity"]["registrations"], registrations, ("params",)),
        "orders": (document["activity"]["orders"], orders, ("payload",)),
        "visitors": (document["activity"]["visitors"], visitors, ()),
        "events": (document["events"], outbox, ("body",)),
        "reminders": (document["reminders"], reminders, ("items",)),
        "recoveries": (document["recoveries"], recoveries, ()),
        "caps": (document["caps"], caps, ()),
    }
    anns, bobs = about(ANN, "a"), about(BOB, "b")
    for name, (exported, table, json_columns) in sections.items():
        rows = table_rows(tracker, table, *json_columns)
        assert rows, name
        assert all(anns(row) != bobs(row) for row in rows), name  # each row is one person's
        assert by_key(exported) == by_key([row for row in rows if anns(row)]), name
    assert {event["status"] for event in document["events"]} == {"sent", "dead", "pending"}
    assert all(isinstance(event["body"], dict) for event in document["events"])
    assert [(r["clicks"], r["email"]) for r in document["reminders"]] == [(1, ANN)]
    assert [r["order_id"] for r in document["recoveries"]] == ["order-a"]
    history = table_rows(tracker, consent_history)
    assert [(entry["opted_in"], entry["source"]) for entry in document["consent"]] == [
        (row["opted_in"], row["source"]) for row in history if row["email"] == ANN
    ]
    assert [entry["opted_in"] for entry in document["consent"]] == [False, True]
    assert BOB not in json.dumps(document).lower()


def test_the_export_of_an_address_never_seen_is_empty(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker()
    tracker.logged_in(BOB)
    document = tracker.export(ANN)
    assert document["activity"] == {
        "carts": [],
        "browses": [],
        "registrations": [],
        "orders": [],
        "visitors": [],
    }
    assert [document[name] for name in ("events", "consent", "reminders", "recoveries")] == [
        [],
        [],
        [],
        [],
    ]
    assert document["mentions"] == {"capture_errors": [], "kept_captures": [], "state": []}


def test_a_bad_address_is_refused_naming_the_field(make_tracker: TrackerFactory) -> None:
    with pytest.raises(ValidationError) as raised:
        make_tracker().export("ann at example.com")
    assert raised.value.field == "email"

"""The engines store and decide alike: keys, text, times, and writers racing for one row."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from shop_events.config import DatabaseSettings
from shop_events.storage import caps, carts, outbox
from shop_events.storage.engines import make_engine, upsert
from shop_events.storage.outbox import NewEvent
from shop_events.storage.tables import carts as carts_table
from shop_events.storage.tables import outbox as outbox_table
from sqlalchemy import Engine, case, select

NOW = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
RACERS = 8


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The plugin's engine on a migrated database of each engine."""
    made = make_engine(DatabaseSettings(url=database_url))
    yield made
    made.dispose()


def record_cart(engine: Engine, cart_id: str, items: str, now: datetime = NOW) -> None:
    with engine.begin() as conn:
        carts.record(
            conn,
            cart_id=cart_id,
            email="ann@example.com",
            visitor_id=None,
            items=items,
            currency="EUR",
            restore_url=None,
            now=now,
        )


def test_keys_that_differ_only_in_case_or_accents_are_different_rows(
    engine: Engine,
) -> None:
    """MySQL's default collations would take these for one key; the tables compare bytes."""
    ids = ["cart-a", "Cart-A", "cárt-a", "cart-å"]
    for cart_id in ids:
        record_cart(engine, cart_id, "[]")
    with engine.connect() as conn:
        stored = conn.execute(select(carts_table.c.cart_id)).scalars().all()
        found = conn.execute(
            select(carts_table.c.cart_id).where(carts_table.c.cart_id == "cart-a")
        ).scalars()
        assert list(found) == ["cart-a"]
    assert sorted(stored) == sorted(ids)


def test_four_byte_characters_and_a_cart_over_64_kb_are_stored_whole(engine: Engine) -> None:
    items = json.dumps(
        [{"name": f"Gift 🎁 {i}", "url": "https://shop.example/p/" + "x" * 400} for i in range(200)]
    )
    assert len(items.encode()) > 80_000  # more than a MySQL TEXT holds
    record_cart(engine, "big", items)
    with engine.connect() as conn:
        stored = conn.execute(
            select(carts_table.c["items"]).where(carts_table.c.cart_id == "big")
        ).scalar_one()
    assert stored == items


def test_times_keep_their_microseconds_and_come_back_in_utc(engine: Engine) -> None:
    record_cart(engine, "c", "[]", now=NOW)
    with engine.begin() as conn:
        stored = conn.execute(
            select(carts_table.c.last_activity_at).where(carts_table.c.cart_id == "c")
        ).scalar_one()
        database_now = outbox.database_now(conn)
    assert stored == NOW
    assert database_now.tzinfo is UTC
    assert abs(database_now - datetime.now(UTC)) < timedelta(minutes=5)


def test_a_changed_cart_is_a_new_version_rearmed_and_an_unchanged_one_is_not(
    engine: Engine,
) -> None:
    """The cart upsert's assignments read the stored hash, state and reason, never ones the
    same statement set (MySQL runs its assignments in order)."""
    record_cart(engine, "c", '["a"]')
    with engine.begin() as conn:
        conn.execute(
            carts_table.update().values(state="suppressed", skip_reason="opted_out")
        )  # as the scan leaves a cart it skipped
    record_cart(engine, "c", '["a"]', now=NOW + timedelta(minutes=1))
    with engine.connect() as conn:
        same = conn.execute(select(carts_table).where(carts_table.c.cart_id == "c")).one()
    record_cart(engine, "c", '["a", "b"]', now=NOW + timedelta(minutes=2))
    with engine.connect() as conn:
        changed = conn.execute(select(carts_table).where(carts_table.c.cart_id == "c")).one()
    assert (same.version, same.state, same.skip_reason) == (1, "suppressed", "opted_out")
    assert (changed.version, changed.state, changed.skip_reason) == (2, "active", None)
    assert changed.content_hash != same.content_hash


def race(engine: Engine, work: Callable[[Any], Any]) -> list[Any]:
    """``work(conn)`` in :data:`RACERS` threads at once, each in a transaction of its own."""
    barrier = threading.Barrier(RACERS)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(30)
            with engine.begin() as conn:
                result = work(conn)
            with lock:
                results.append(result)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_writers_racing_for_one_frequency_cap_let_exactly_one_through(engine: Engine) -> None:
    taken = race(engine, lambda conn: caps.take(conn, "cart", "ann", NOW, timedelta(hours=1)))
    assert sorted(taken) == [False] * (RACERS - 1) + [True]
    later = race(
        engine,
        lambda conn: caps.take(conn, "cart", "ann", NOW + timedelta(hours=2), timedelta(hours=1)),
    )
    assert sorted(later) == [False] * (RACERS - 1) + [True]


def ann_events(count: int) -> list[NewEvent]:
    """``count`` distinct events of one contact for the events endpoint."""
    return [
        NewEvent(
            dedupe_key=f"event-{n}",
            event_type_key="wishlist",
            key_value="ann@example.com",
            api_path="v1/event",
            body="{}",
        )
        for n in range(count)
    ]


def test_writers_racing_to_queue_the_same_events_queue_each_once(engine: Engine) -> None:
    events = ann_events(60)
    queued = race(engine, lambda conn: outbox.enqueue(conn, events, NOW))
    assert sum(queued) == len(events)
    with engine.connect() as conn:
        keys = conn.execute(select(outbox_table.c.dedupe_key)).scalars().all()
    assert sorted(keys) == sorted(e.dedupe_key for e in events)


def test_an_upsert_that_reads_a_column_set_before_it_is_refused() -> None:
    """On MySQL an assignment sees the values set before it in the same statement."""
    values = {"cart_id": "c", "content_hash": "h"}
    changed = carts_table.c.content_hash != "h"
    in_order = [("version", case((changed, 2), else_=1)), ("content_hash", "h")]
    upsert("mysql", carts_table, values, update=in_order)
    with pytest.raises(ValueError, match=r"shop_events_carts\.version: reads content_hash"):
        upsert("mariadb", carts_table, values, update=in_order[::-1])


def test_delivered_rows_are_settled_together_but_only_those_this_worker_still_holds(
    engine: Engine,
) -> None:
    events = ann_events(4)
    with engine.begin() as conn:
        outbox.enqueue(conn, events, NOW)
        claimed = outbox.claim(conn, NOW, timedelta(minutes=5), 10)
    assert len(claimed) == 4
    taken_over = claimed[3]
    with engine.begin() as conn:  # another worker took the last row's expired lease
        conn.execute(
            outbox_table.update()
            .where(outbox_table.c.id == taken_over.id)
            .values(lease_token="someone-else")
        )
        done = outbox.settle_sent(conn, claimed, sent_at=NOW, response_status=202)
    assert done == {row.id for row in claimed[:3]}
    with engine.connect() as conn:
        rows = {
            row.id: row
            for row in conn.execute(
                select(
                    outbox_table.c.id,
                    outbox_table.c.status,
                    outbox_table.c.attempts,
                    outbox_table.c.lease_token,
                    outbox_table.c.response_status,
                    outbox_table.c.sent_at,
                )
            )
        }
    for row in claimed[:3]:
        stored = rows[row.id]
        assert (stored.status, stored.attempts, stored.lease_token) == (
            "sent",
            row.attempts + 1,
            None,
        )
        assert stored.response_status == 202
        assert stored.sent_at.replace(tzinfo=UTC) == NOW
    assert (rows[taken_over.id].status, rows[taken_over.id].lease_token) == (
        "in_flight",
        "someone-else",
    )

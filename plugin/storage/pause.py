"""Delivery pause shared by every process: set on 401/403, so a bad key spends no attempts.

While paused, no worker claims anything. When the pause ends, the key is checked without any
event: a good key clears the pause, a refused one renews it. Without a verdict from that check,
one event is sent as a probe; its success clears the pause, another 401 renews it.

The circuit is the same kind of shared state, for an API that does not answer: while it is
open no worker claims, and one probe per interval (taken by one process) asks the API again.

The table also keeps values made once for the whole database (:func:`keep_value`), such as the
salt of the consent suppressions.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, text, update

from ..payload.address_forms import redact as redacted
from .engines import is_mysql, upsert
from .person import Person, mentions
from .tables import runtime_state

TABLE = runtime_state.name

PAUSE = "delivery_paused"


@dataclasses.dataclass(frozen=True)
class Pause:
    """Why delivery is paused and until when."""

    reason: str
    until: datetime
    since: datetime

    def active(self, now: datetime) -> bool:
        """True while no worker may send."""
        return now < self.until


def _state(conn: Connection, name: str) -> Any:
    """One named shared state's ``value``, ``until`` and ``updated_at``, or None."""
    return conn.execute(
        select(runtime_state.c.value, runtime_state.c.until, runtime_state.c.updated_at).where(
            runtime_state.c.name == name
        )
    ).first()


def current(conn: Connection) -> Pause | None:
    """The pause in force or expired-but-not-yet-probed, if any."""
    row = _state(conn, PAUSE)
    if row is None:
        return None
    return Pause(reason=row.value or "", until=row.until, since=row.updated_at)


PAUSE_LOCK_ID = 0x5E0E0401
"""The PostgreSQL advisory lock that orders concurrent decisions to pause delivery."""
PAUSE_LOCK_ROW = "delivery_decisions"
"""On MySQL, the row whose lock orders them instead: ``GET_LOCK`` outlives the transaction."""


def _decide_alone(conn: Connection, now: datetime) -> None:
    """Wait for any other transaction deciding to pause (or to open the circuit), and keep
    others waiting until this one ends: on PostgreSQL two transactions would otherwise both see
    no pause before either commits (an advisory lock, released at commit); on MySQL an upsert
    of one row locks it to the end of the transaction; SQLite's ``BEGIN IMMEDIATE`` already
    serialises them."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": PAUSE_LOCK_ID})
    elif is_mysql(conn):
        values = {"name": PAUSE_LOCK_ROW, "value": None, "until": None, "updated_at": now}
        conn.execute(upsert(conn, runtime_state, values, update={"updated_at": now}))


def pause(conn: Connection, reason: str, now: datetime, until: datetime) -> bool:
    """Pause delivery; True if it was not already paused (so the caller logs once per pause).

    Concurrent 401s in several threads and processes are decided one at a time
    (:func:`_decide_alone`), so only the first sees no pause.
    """
    _decide_alone(conn, now)
    before = current(conn)
    values = {"name": PAUSE, "value": reason, "until": until, "updated_at": now}
    conn.execute(
        upsert(
            conn,
            runtime_state,
            values,
            update={"value": reason, "until": until, "updated_at": now},
        )
    )
    return before is None or not before.active(now)


def resume(conn: Connection) -> bool:
    """Clear the pause (a probe succeeded, or the operator fixed the key); True if there was one."""
    return conn.execute(delete(runtime_state).where(runtime_state.c.name == PAUSE)).rowcount > 0


CIRCUIT = "delivery_circuit"
"""The shared circuit's row: open while it exists; ``until`` is when the next probe may go."""


@dataclasses.dataclass(frozen=True)
class Circuit:
    """The open circuit: the API looked unreachable (no response, 5xx) to most recent sends.

    While it is open no worker claims anything; one probe per ``delivery.probe_interval``
    (the oldest due event) checks whether the API answers again.
    """

    reason: str
    since: datetime
    until: datetime
    """When the next probe may go (the last probe's time plus ``delivery.probe_interval``)."""

    def probe_due(self, now: datetime) -> bool:
        """True once a probe may be sent."""
        return now >= self.until


def circuit(conn: Connection) -> Circuit | None:
    """The open circuit, if any."""
    row = _state(conn, CIRCUIT)
    if row is None:
        return None
    return Circuit(reason=row.value or "", since=row.updated_at, until=row.until)


def open_circuit(conn: Connection, reason: str, now: datetime, until: datetime) -> bool:
    """Open the circuit until the first probe; True if it was not open yet (the caller logs
    once). An open circuit is left as it is: its opening time and probe schedule stand."""
    _decide_alone(conn, now)
    if circuit(conn) is not None:
        return False
    values = {"name": CIRCUIT, "value": reason, "until": until, "updated_at": now}
    conn.execute(upsert(conn, runtime_state, values))
    return True


def take_probe(conn: Connection, now: datetime, next_probe: datetime) -> bool:
    """Claim the circuit's probe due at ``now`` and set the next one to ``next_probe``; True for
    the one process and thread that gets it, so one probe goes per interval, whoever runs."""
    stmt = (
        update(runtime_state)
        .where(runtime_state.c.name == CIRCUIT, runtime_state.c.until <= now)
        .values(until=next_probe)
    )
    return conn.execute(stmt).rowcount == 1


def close_circuit(conn: Connection) -> bool:
    """Close the circuit (the API answered); True if it was open."""
    return conn.execute(delete(runtime_state).where(runtime_state.c.name == CIRCUIT)).rowcount > 0


def kept_value(conn: Connection, name: str) -> str | None:
    """The value kept under ``name`` by :func:`keep_value`, or None."""
    row = _state(conn, name)
    return None if row is None else row.value


def keep_value(conn: Connection, name: str, value: str, now: datetime) -> str:
    """Keep ``value`` under ``name`` unless one is kept already; the value kept. When two
    transactions race, both return the first one's."""
    values = {"name": name, "value": value, "until": None, "updated_at": now}
    conn.execute(upsert(conn, runtime_state, values))
    kept = kept_value(conn, name)
    assert kept is not None
    return kept


def put_value(conn: Connection, name: str, value: str, now: datetime) -> None:
    """Keep ``value`` under ``name``, replacing what was kept (a backfill's checkpoint, written
    in the transaction of the rows it stands for)."""
    values = {"name": name, "value": value, "until": None, "updated_at": now}
    conn.execute(upsert(conn, runtime_state, values, update={"value": value, "updated_at": now}))


def drop_value(conn: Connection, name: str) -> bool:
    """Forget the value kept under ``name``; True if there was one."""
    return conn.execute(delete(runtime_state).where(runtime_state.c.name == name)).rowcount > 0


def mentioning(conn: Connection, person: Person) -> list[Any]:
    """The shared states whose value mentions the person's address (a pause's or the
    circuit's reason quoting the platform's answer)."""
    query = select(runtime_state).where(mentions([runtime_state.c.value], person))
    return list(conn.execute(query.order_by(runtime_state.c.name)))


def redact(conn: Connection, person: Person) -> int:
    """Blank the person's address out of the shared states that mention it; how many."""
    rows = mentioning(conn, person)
    for row in rows:
        conn.execute(
            update(runtime_state)
            .where(runtime_state.c.name == row.name)
            .values(value=redacted(row.value, person.forms))
        )
    return len(rows)

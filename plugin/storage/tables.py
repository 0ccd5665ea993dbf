"""The plugin's own tables (prefix ``shop_events_``) on their own ``MetaData``.

Each index serves one query: ``ix_shop_events_carts_due`` the abandonment scan (``…_next_step``
its later reminder steps, over the abandoned rows only),
``ix_shop_events_outbox_due`` and ``ix_shop_events_outbox_lease`` the dispatcher's claim,
``ix_shop_events_outbox_subject`` superseding a cart's queued events.

On MySQL and MariaDB every table is ``utf8mb4`` with the binary collation whatever the
database's defaults, so keys compare as on the other engines (case and accents count); times
keep microseconds (``DATETIME(6)``) and long text may exceed 64 kB (``MEDIUMTEXT``). Every key
fits InnoDB's 3072-byte index limit at four bytes a character.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine

MYSQL_DIALECTS = ("mysql", "mariadb")
LongText = Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL_DIALECTS)
"""``TEXT``, or on MySQL ``MEDIUMTEXT`` (a MySQL ``TEXT`` holds at most 64 kB)."""
MYSQL_TABLE: dict[str, Any] = {
    f"{dialect}_{option}": value
    for dialect in MYSQL_DIALECTS
    for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}
"""Options of every table on MySQL and MariaDB (their dialects read their own prefix)."""

ABANDONED = "'abandoned'"
"""The ``abandoned`` state as SQL text: a partial index is used only by a query naming the same
literal (a bound parameter cannot be proven to match it)."""
ABANDONED_ONLY: dict[str, Any] = {
    f"{dialect}_where": text(f"state = {ABANDONED}") for dialect in ("postgresql", "sqlite")
}
"""Index only the rows waiting for a later reminder step (MySQL, which has no partial
indexes, indexes every row)."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every engine (so SQLite compares text correctly); read back aware."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_DIALECTS:  # MySQL's DATETIME drops the fraction of a second
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return super().load_dialect_impl(dialect)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the plugin works in aware UTC only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


carts = Table(
    "shop_events_carts",
    metadata,
    Column("cart_id", String(255), primary_key=True),
    Column("email", String(254), nullable=True),
    Column("visitor_id", String(255), nullable=True),
    Column("items", LongText, nullable=False),
    Column("currency", String(3), nullable=True),
    Column("restore_url", String(2048), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("skip_reason", String(32), nullable=True),
    Column("step", Integer, nullable=False, default=0, server_default="0"),
    Column("last_activity_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_shop_events_carts_due", "state", "last_activity_at"),
    Index("ix_shop_events_carts_next_step", "step", "last_activity_at", **ABANDONED_ONLY),
    Index("ix_shop_events_carts_email", "email"),
    Index("ix_shop_events_carts_visitor", "visitor_id"),
    **MYSQL_TABLE,
)

browses = Table(
    "shop_events_browses",
    metadata,
    Column("browse_key", String(300), primary_key=True),
    Column("email", String(254), nullable=True),
    Column("visitor_id", String(255), nullable=True),
    Column("items", LongText, nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("skip_reason", String(32), nullable=True),
    Column("step", Integer, nullable=False, default=0, server_default="0"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_activity_at", UTCDateTime, nullable=False),
    Index("ix_shop_events_browses_due", "state", "last_activity_at"),
    Index("ix_shop_events_browses_next_step", "step", "last_activity_at", **ABANDONED_ONLY),
    Index("ix_shop_events_browses_email", "email"),
    **MYSQL_TABLE,
)
"""Products a shopper viewed; keyed ``e:<email>`` or ``v:<visitor id>`` until identified."""

registrations = Table(
    "shop_events_registrations",
    metadata,
    Column("email", String(254), primary_key=True),
    Column("params", LongText, nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("skip_reason", String(32), nullable=True),
    Column("step", Integer, nullable=False, default=0, server_default="0"),
    Column("last_activity_at", UTCDateTime, nullable=False),
    Index("ix_shop_events_registrations_due", "state", "last_activity_at"),
    Index("ix_shop_events_registrations_next_step", "step", "last_activity_at", **ABANDONED_ONLY),
    **MYSQL_TABLE,
)

orders = Table(
    "shop_events_orders",
    metadata,
    Column("order_id", String(255), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("status", String(64), nullable=False),
    Column("payload", LongText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_shop_events_orders_updated", "updated_at"),
    **MYSQL_TABLE,
)
"""Orders seen, so a later status change knows its contact and products."""

visitors = Table(
    "shop_events_visitors",
    metadata,
    Column("visitor_id", String(255), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE,
)
"""Which contact an anonymous visitor id turned out to be (``identify``)."""

consent = Table(
    "shop_events_consent",
    metadata,
    Column("email", String(254), primary_key=True),
    Column("opted_out", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE,
)
"""Each contact's latest consent decision: the last entry of its history."""

consent_history = Table(
    "shop_events_consent_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(254), nullable=False),
    Column("opted_in", Boolean, nullable=False),
    Column("source", String(200), nullable=True),
    Column("basis", String(32), nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_shop_events_consent_history_email", "email", "id"),
    **MYSQL_TABLE,
)
"""Every opt-in and opt-out, in the order recorded: where it came from (``source``) and the
lawful basis given (``basis``)."""

suppressions = Table(
    "shop_events_suppressions",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE,
)
"""Addresses erased on request that must get no marketing until they opt in again, kept only
as a salted hash (HMAC-SHA256, hex)."""

outbox = Table(
    "shop_events_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(500), nullable=False, unique=True),
    Column("event_type_key", String(100), nullable=False),
    Column("key_value", String(300), nullable=False),
    Column("api_path", String(64), nullable=False),
    Column("body", LongText, nullable=False),
    Column("subject_type", String(32), nullable=True),
    Column("subject_id", String(300), nullable=True),
    Column("subject_version", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_token", String(36), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("last_error", LongText, nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Index("ix_shop_events_outbox_due", "status", "next_attempt_at"),
    Index("ix_shop_events_outbox_lease", "status", "lease_expires_at"),
    Index("ix_shop_events_outbox_subject", "subject_type", "subject_id"),
    Index("ix_shop_events_outbox_created", "status", "created_at"),
    **MYSQL_TABLE,
)

caps = Table(
    "shop_events_caps",
    metadata,
    Column("flow", String(100), primary_key=True),
    Column("contact", String(300), primary_key=True),
    Column("last_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE,
)
"""When each contact was last sent each marketing flow: the frequency cap's memory."""

runtime_state = Table(
    "shop_events_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LongText, nullable=True),
    Column("until", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE,
)
"""Shared flags of all processes, e.g. ``delivery_paused`` after a 401."""

rate_schedule = Table(
    "shop_events_rate_schedule",
    metadata,
    Column("family", String(32), primary_key=True),
    Column(
        "next_at",
        Float(precision=53).with_variant(mysql.DOUBLE(asdecimal=False), *MYSQL_DIALECTS),
        nullable=False,
    ),
    **MYSQL_TABLE,
)
"""Per endpoint family, the first instant (seconds since the epoch, on the database's clock)
not yet handed to any sender: the account's rate limit, shared by every process and host."""

capture_errors = Table(
    "shop_events_capture_errors",
    metadata,
    Column("mapping", String(32), primary_key=True),
    Column("field", String(100), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
    Column("last_subject", String(300), nullable=True),
    Column("last_error", LongText, nullable=False),
    Index("ix_shop_events_capture_errors_last", "last_at"),
    **MYSQL_TABLE,
)
"""Captures that failed, counted per mapping (``cart``, ``order``, ``customer``) and field
(``item``, ``total``, ``items[].price`` …), with the newest message of each."""

kept_captures = Table(
    "shop_events_kept_captures",
    metadata,
    Column("model", String(100), primary_key=True),
    Column("subject_key", String(300), primary_key=True),
    Column("mapping", String(32), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_field", String(100), nullable=False),
    Column("last_error", LongText, nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE,
)
"""Captures that could not complete (an order whose total could not be read yet …), kept to
be tried again at the next commit that touches them; keyed by the model's table and the row's
key (JSON)."""

reminders = Table(
    "shop_events_reminders",
    metadata,
    Column("dedupe_key", String(500), primary_key=True),
    Column("flow", String(32), nullable=False),
    Column("event_type_key", String(100), nullable=False),
    Column("subject_id", String(300), nullable=False),
    Column("subject_version", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("email", String(254), nullable=False),
    Column("items", LongText, nullable=True),
    Column("coupon", String(100), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("first_click_at", UTCDateTime, nullable=True),
    Column("clicks", Integer, nullable=False, default=0),
    Index("ix_shop_events_reminders_email", "email", "delivered_at"),
    Index("ix_shop_events_reminders_subject", "subject_id", "delivered_at"),
    Index("ix_shop_events_reminders_created", "created_at"),
    Index("ix_shop_events_reminders_delivered", "delivered_at"),
    Index("ix_shop_events_reminders_clicked", "first_click_at"),
    **MYSQL_TABLE,
)
"""Every reminder queued (one per flow, subject, version and step; keyed like its outbox row),
when it was delivered and its link first opened: what attribution and the recovery report
read, kept apart from the outbox so that its retention does not erase them. A cart's reminder
keeps the cart as the email showed it (``items``), to restore it on another device."""

recoveries = Table(
    "shop_events_recoveries",
    metadata,
    Column("order_id", String(255), primary_key=True),
    Column("reminder_key", String(500), nullable=False),
    Column("flow", String(32), nullable=False),
    Column("step", Integer, nullable=False),
    Column("email", String(254), nullable=False),
    Column("cart_id", String(255), nullable=True),
    Column("revenue", String(40), nullable=False),
    Column("currency", String(3), nullable=True),
    Column("reminded_at", UTCDateTime, nullable=False),
    Column("ordered_at", UTCDateTime, nullable=False),
    Column("clicked", Boolean, nullable=False),
    Index("ix_shop_events_recoveries_ordered", "ordered_at"),
    **MYSQL_TABLE,
)
"""Orders credited to a reminder: placed by its contact (or for its cart) within
``recovery.attribution_window`` after it was delivered; once per order, to the last one.
``revenue`` is the order's total as exact decimal text."""

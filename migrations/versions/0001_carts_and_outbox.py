"""Carts, the outbox, frequency caps and shared runtime state.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


MYSQL = ("mysql", "mariadb")
TABLE = {
    f"{dialect}_{option}": value
    for dialect in MYSQL
    for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}
"""On MySQL and MariaDB: 4-byte UTF-8 compared as binary, whatever the database's defaults."""


def _text() -> sa.types.TypeEngine[str]:
    """``TEXT``; on MySQL ``MEDIUMTEXT`` (its ``TEXT`` holds at most 64 kB)."""
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL)


def _datetime() -> sa.types.TypeEngine[datetime]:
    """Naive UTC; on MySQL with microseconds (its ``DATETIME`` drops them)."""
    return sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), *MYSQL)


def _utc(name: str, nullable: bool = False) -> sa.Column[sa.DateTime]:
    """Times are stored as naive UTC (see shop_events.storage.tables.UTCDateTime)."""
    return sa.Column(name, _datetime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "shop_events_carts",
        sa.Column("cart_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("items", _text(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("restore_url", sa.String(2048), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("skip_reason", sa.String(32), nullable=True),
        _utc("last_activity_at"),
        _utc("created_at"),
        sa.PrimaryKeyConstraint("cart_id", name="pk_shop_events_carts"),
        **TABLE,
    )
    op.create_index("ix_shop_events_carts_due", "shop_events_carts", ["state", "last_activity_at"])
    op.create_index("ix_shop_events_carts_email", "shop_events_carts", ["email"])

    op.create_table(
        "shop_events_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(500), nullable=False),
        sa.Column("event_type_key", sa.String(100), nullable=False),
        sa.Column("key_value", sa.String(300), nullable=False),
        sa.Column("api_path", sa.String(64), nullable=False),
        sa.Column("body", _text(), nullable=False),
        sa.Column("subject_type", sa.String(32), nullable=True),
        sa.Column("subject_id", sa.String(300), nullable=True),
        sa.Column("subject_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _utc("next_attempt_at"),
        sa.Column("lease_token", sa.String(36), nullable=True),
        _utc("lease_expires_at", nullable=True),
        sa.Column("last_error", _text(), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        _utc("created_at"),
        _utc("sent_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_shop_events_outbox"),
        sa.UniqueConstraint("dedupe_key", name="uq_shop_events_outbox_dedupe_key"),
        **TABLE,
    )
    for name, columns in (
        ("ix_shop_events_outbox_due", ["status", "next_attempt_at"]),
        ("ix_shop_events_outbox_lease", ["status", "lease_expires_at"]),
        ("ix_shop_events_outbox_subject", ["subject_type", "subject_id"]),
        ("ix_shop_events_outbox_created", ["status", "created_at"]),
    ):
        op.create_index(name, "shop_events_outbox", columns)

    op.create_table(
        "shop_events_caps",
        sa.Column("flow", sa.String(100), nullable=False),
        sa.Column("contact", sa.String(300), nullable=False),
        _utc("last_at"),
        sa.PrimaryKeyConstraint("flow", "contact", name="pk_shop_events_caps"),
        **TABLE,
    )
    op.create_table(
        "shop_events_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", _text(), nullable=True),
        _utc("until", nullable=True),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_shop_events_state"),
        **TABLE,
    )


def downgrade() -> None:
    op.drop_table("shop_events_state")
    op.drop_table("shop_events_caps")
    op.drop_table("shop_events_outbox")
    op.drop_table("shop_events_carts")

"""Browses, registrations, orders, visitors and consent; carts remember their visitor.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
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
    with op.batch_alter_table("shop_events_carts") as batch:
        batch.add_column(sa.Column("visitor_id", sa.String(255), nullable=True))
        batch.create_index("ix_shop_events_carts_visitor", ["visitor_id"])

    op.create_table(
        "shop_events_browses",
        sa.Column("browse_key", sa.String(300), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("visitor_id", sa.String(255), nullable=True),
        sa.Column("items", _text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("skip_reason", sa.String(32), nullable=True),
        _utc("started_at"),
        _utc("last_activity_at"),
        sa.PrimaryKeyConstraint("browse_key", name="pk_shop_events_browses"),
        **TABLE,
    )
    op.create_index(
        "ix_shop_events_browses_due", "shop_events_browses", ["state", "last_activity_at"]
    )
    op.create_index("ix_shop_events_browses_email", "shop_events_browses", ["email"])

    op.create_table(
        "shop_events_registrations",
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("params", _text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("skip_reason", sa.String(32), nullable=True),
        _utc("last_activity_at"),
        sa.PrimaryKeyConstraint("email", name="pk_shop_events_registrations"),
        **TABLE,
    )
    op.create_index(
        "ix_shop_events_registrations_due",
        "shop_events_registrations",
        ["state", "last_activity_at"],
    )

    op.create_table(
        "shop_events_orders",
        sa.Column("order_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("payload", _text(), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("order_id", name="pk_shop_events_orders"),
        **TABLE,
    )
    op.create_index("ix_shop_events_orders_updated", "shop_events_orders", ["updated_at"])

    op.create_table(
        "shop_events_visitors",
        sa.Column("visitor_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("visitor_id", name="pk_shop_events_visitors"),
        **TABLE,
    )

    op.create_table(
        "shop_events_consent",
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("email", name="pk_shop_events_consent"),
        **TABLE,
    )


def downgrade() -> None:
    op.drop_table("shop_events_consent")
    op.drop_table("shop_events_visitors")
    op.drop_table("shop_events_orders")
    op.drop_table("shop_events_registrations")
    op.drop_table("shop_events_browses")
    with op.batch_alter_table("shop_events_carts") as batch:
        batch.drop_index("ix_shop_events_carts_visitor")
        batch.drop_column("visitor_id")

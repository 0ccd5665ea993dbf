"""Reminders in steps, and what recovery reports: reminders delivered and clicked, orders
credited to them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-16
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


MYSQL = ("mysql", "mariadb")
TABLE = {
    f"{dialect}_{option}": value
    for dialect in MYSQL
    for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}
"""On MySQL and MariaDB: 4-byte UTF-8 compared as binary, whatever the database's defaults."""
ACTIVITY = ("shop_events_carts", "shop_events_browses", "shop_events_registrations")


def _text() -> sa.types.TypeEngine[str]:
    """``TEXT``; on MySQL ``MEDIUMTEXT`` (its ``TEXT`` holds at most 64 kB)."""
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL)


def _datetime() -> sa.types.TypeEngine[datetime]:
    """Naive UTC; on MySQL with microseconds (its ``DATETIME`` drops them)."""
    return sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), *MYSQL)


def upgrade() -> None:
    for table in ACTIVITY:
        op.add_column(table, sa.Column("step", sa.Integer(), nullable=False, server_default="0"))
        # a row already abandoned has sent its one step: it is not reminded again
        op.execute(sa.text(f"UPDATE {table} SET step = 1 WHERE state = 'abandoned'"))
        op.create_index(
            f"ix_{table}_next_step",
            table,
            ["step", "last_activity_at"],
            postgresql_where=sa.text("state = 'abandoned'"),
            sqlite_where=sa.text("state = 'abandoned'"),
        )
    op.create_table(
        "shop_events_reminders",
        sa.Column("dedupe_key", sa.String(500), nullable=False),
        sa.Column("flow", sa.String(32), nullable=False),
        sa.Column("event_type_key", sa.String(100), nullable=False),
        sa.Column("subject_id", sa.String(300), nullable=False),
        sa.Column("subject_version", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("items", _text(), nullable=True),
        sa.Column("coupon", sa.String(100), nullable=True),
        sa.Column("created_at", _datetime(), nullable=False),
        sa.Column("delivered_at", _datetime(), nullable=True),
        sa.Column("first_click_at", _datetime(), nullable=True),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("dedupe_key", name="pk_shop_events_reminders"),
        **TABLE,
    )
    for name, columns in (
        ("email", ["email", "delivered_at"]),
        ("subject", ["subject_id", "delivered_at"]),
        ("created", ["created_at"]),
        ("delivered", ["delivered_at"]),
        ("clicked", ["first_click_at"]),
    ):
        op.create_index(f"ix_shop_events_reminders_{name}", "shop_events_reminders", columns)
    op.create_table(
        "shop_events_recoveries",
        sa.Column("order_id", sa.String(255), nullable=False),
        sa.Column("reminder_key", sa.String(500), nullable=False),
        sa.Column("flow", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("cart_id", sa.String(255), nullable=True),
        sa.Column("revenue", sa.String(40), nullable=False),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("reminded_at", _datetime(), nullable=False),
        sa.Column("ordered_at", _datetime(), nullable=False),
        sa.Column("clicked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name="pk_shop_events_recoveries"),
        **TABLE,
    )
    op.create_index("ix_shop_events_recoveries_ordered", "shop_events_recoveries", ["ordered_at"])


def downgrade() -> None:
    op.drop_index("ix_shop_events_recoveries_ordered", table_name="shop_events_recoveries")
    op.drop_table("shop_events_recoveries")
    for name in ("clicked", "delivered", "created", "subject", "email"):
        op.drop_index(f"ix_shop_events_reminders_{name}", table_name="shop_events_reminders")
    op.drop_table("shop_events_reminders")
    for table in ACTIVITY:
        op.drop_index(f"ix_{table}_next_step", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("step")

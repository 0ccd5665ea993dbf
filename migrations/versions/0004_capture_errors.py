"""Capture errors counted per mapping and field, and captures kept to be tried again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
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


def upgrade() -> None:
    op.create_table(
        "shop_events_capture_errors",
        sa.Column("mapping", sa.String(32), nullable=False),
        sa.Column("field", sa.String(100), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", _datetime(), nullable=False),
        sa.Column("last_at", _datetime(), nullable=False),
        sa.Column("last_subject", sa.String(300), nullable=True),
        sa.Column("last_error", _text(), nullable=False),
        sa.PrimaryKeyConstraint("mapping", "field", name="pk_shop_events_capture_errors"),
        **TABLE,
    )
    op.create_index("ix_shop_events_capture_errors_last", "shop_events_capture_errors", ["last_at"])
    op.create_table(
        "shop_events_kept_captures",
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("subject_key", sa.String(300), nullable=False),
        sa.Column("mapping", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_field", sa.String(100), nullable=False),
        sa.Column("last_error", _text(), nullable=False),
        sa.Column("first_at", _datetime(), nullable=False),
        sa.Column("last_at", _datetime(), nullable=False),
        sa.PrimaryKeyConstraint("model", "subject_key", name="pk_shop_events_kept_captures"),
        **TABLE,
    )


def downgrade() -> None:
    op.drop_table("shop_events_kept_captures")
    op.drop_index("ix_shop_events_capture_errors_last", table_name="shop_events_capture_errors")
    op.drop_table("shop_events_capture_errors")

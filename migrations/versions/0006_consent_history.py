"""Consent history (every opt-in and opt-out, with its source and basis) and the suppressions of
addresses erased on request.

Each contact's decision recorded before becomes its first history entry, at the time it was
recorded, with the source ``before consent history``.

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-12
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


MYSQL = ("mysql", "mariadb")
TABLE = {
    f"{dialect}_{option}": value
    for dialect in MYSQL
    for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}
"""On MySQL and MariaDB: 4-byte UTF-8 compared as binary, whatever the database's defaults."""
BEFORE = "before consent history"
"""The source of the entries made from the decisions recorded before this revision."""


def _datetime() -> sa.types.TypeEngine[datetime]:
    """Naive UTC; on MySQL with microseconds (its ``DATETIME`` drops them)."""
    return sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), *MYSQL)


def upgrade() -> None:
    history = op.create_table(
        "shop_events_consent_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("opted_in", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("basis", sa.String(32), nullable=True),
        sa.Column("at", _datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_shop_events_consent_history"),
        **TABLE,
    )
    op.create_index(
        "ix_shop_events_consent_history_email", "shop_events_consent_history", ["email", "id"]
    )
    op.create_table(
        "shop_events_suppressions",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", _datetime(), nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_shop_events_suppressions"),
        **TABLE,
    )
    consent = sa.table(
        "shop_events_consent",
        sa.column("email", sa.String()),
        sa.column("opted_out", sa.Boolean()),
        sa.column("updated_at", _datetime()),
    )
    earlier = sa.select(
        consent.c.email,
        sa.not_(consent.c.opted_out),
        sa.literal(BEFORE, sa.String()),
        consent.c.updated_at,
    ).order_by(consent.c.updated_at, consent.c.email)
    op.execute(history.insert().from_select(["email", "opted_in", "source", "at"], earlier))


def downgrade() -> None:
    op.drop_table("shop_events_suppressions")
    op.drop_index("ix_shop_events_consent_history_email", table_name="shop_events_consent_history")
    op.drop_table("shop_events_consent_history")

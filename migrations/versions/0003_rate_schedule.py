"""The account's rate limit, shared by every process: one schedule row per endpoint family.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


MYSQL = ("mysql", "mariadb")
TABLE = {
    f"{dialect}_{option}": value
    for dialect in MYSQL
    for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}
"""On MySQL and MariaDB: 4-byte UTF-8 compared as binary, whatever the database's defaults."""


def upgrade() -> None:
    op.create_table(
        "shop_events_rate_schedule",
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column(
            "next_at",
            sa.Float(precision=53).with_variant(mysql.DOUBLE(asdecimal=False), *MYSQL),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("family", name="pk_shop_events_rate_schedule"),
        **TABLE,
    )


def downgrade() -> None:
    op.drop_table("shop_events_rate_schedule")

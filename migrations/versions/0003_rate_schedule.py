"""The account's rate limit, shared by every process: one schedule row per endpoint family.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shop_events_rate_schedule",
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("next_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("family", name="pk_shop_events_rate_schedule"),
    )


def downgrade() -> None:
    op.drop_table("shop_events_rate_schedule")

"""Capture errors counted per mapping and field, and captures kept to be tried again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shop_events_capture_errors",
        sa.Column("mapping", sa.String(32), nullable=False),
        sa.Column("field", sa.String(100), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("last_subject", sa.String(300), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("mapping", "field", name="pk_shop_events_capture_errors"),
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
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=False), nullable=False),
        sa.PrimaryKeyConstraint("model", "subject_key", name="pk_shop_events_kept_captures"),
    )


def downgrade() -> None:
    op.drop_table("shop_events_kept_captures")
    op.drop_index("ix_shop_events_capture_errors_last", table_name="shop_events_capture_errors")
    op.drop_table("shop_events_capture_errors")

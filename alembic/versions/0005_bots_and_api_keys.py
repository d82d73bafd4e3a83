"""Add bots that belong to an instance, and their hashed API keys.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc_timestamp(name: str, *, nullable: bool = False) -> sa.Column:
    # kilo_web.chat.models.UTCDateTime stores into this column type.
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "bot",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        _utc_timestamp("created_at"),
        sa.ForeignKeyConstraint(["user_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["user_profile.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_index("ix_bot_instance_id", "bot", ["instance_id"])
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        _utc_timestamp("created_at"),
        _utc_timestamp("last_used_at", nullable=True),
        _utc_timestamp("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(["bot_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["user_profile.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_key_bot_id", "api_key", ["bot_id"])


def downgrade() -> None:
    op.drop_index("ix_api_key_bot_id", table_name="api_key")
    op.drop_table("api_key")
    op.drop_index("ix_bot_instance_id", table_name="bot")
    op.drop_table("bot")

"""Add read positions and the notification tables.

Creates ``conversation_read_state`` (how far each member has read each
conversation) and the tables of the notifications service:
``badge_counts``, ``push_delivery`` (per message and recipient push
records), ``push_device``, ``expo_push_ticket`` and ``scheduled_job``
(the persisted cleanup timer).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc_timestamp(name: str, *, nullable: bool = False) -> sa.Column:
    # kilo_web.chat.models.UTCDateTime stores into this column type.
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "conversation_read_state",
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("last_read_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _utc_timestamp("updated_at"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("conversation_id", "user_id"),
    )
    op.create_index(
        "ix_conversation_read_state_user_id", "conversation_read_state", ["user_id"], unique=False
    )

    op.create_table(
        "badge_counts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("badge_bucket", sa.String(length=160), nullable=False),
        sa.Column("count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _utc_timestamp("updated_at"),
        sa.ForeignKeyConstraint(["user_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "badge_bucket"),
    )

    op.create_table(
        "push_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("badge", sa.Integer(), nullable=True),
        sa.Column("badge_bucket", sa.String(length=160), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _utc_timestamp("created_at"),
        _utc_timestamp("updated_at"),
        _utc_timestamp("expires_at"),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["recipient_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "message_id", "recipient_id", name="uq_push_delivery_message_recipient"
        ),
    )
    op.create_index("ix_push_delivery_expires_at", "push_delivery", ["expires_at"], unique=False)
    op.create_index(
        "ix_push_delivery_recipient_id", "push_delivery", ["recipient_id"], unique=False
    )

    op.create_table(
        "push_device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("p256dh", sa.String(length=128), nullable=True),
        sa.Column("auth", sa.String(length=64), nullable=True),
        # sa.true() renders as 1 on SQLite and true on PostgreSQL.
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        _utc_timestamp("created_at"),
        _utc_timestamp("updated_at"),
        sa.ForeignKeyConstraint(["user_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "address", name="uq_push_device_kind_address"),
    )
    op.create_index("ix_push_device_user_id", "push_device", ["user_id"], unique=False)

    op.create_table(
        "expo_push_ticket",
        sa.Column("receipt_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        _utc_timestamp("created_at"),
        sa.ForeignKeyConstraint(["device_id"], ["push_device.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("receipt_id"),
    )
    op.create_index(
        "ix_expo_push_ticket_created_at", "expo_push_ticket", ["created_at"], unique=False
    )
    op.create_index(
        "ix_expo_push_ticket_device_id", "expo_push_ticket", ["device_id"], unique=False
    )

    op.create_table(
        "scheduled_job",
        sa.Column("name", sa.String(length=64), nullable=False),
        _utc_timestamp("next_run_at", nullable=True),
        _utc_timestamp("updated_at"),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    for table in (
        "scheduled_job",
        "expo_push_ticket",
        "push_device",
        "push_delivery",
        "badge_counts",
        "conversation_read_state",
    ):
        # Dropping a table drops its indexes on SQLite and PostgreSQL alike.
        op.drop_table(table)

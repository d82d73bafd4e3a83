"""Create the account and chat tables.

Creates reflex-local-auth's ``localuser`` and ``localauthsession`` tables
(the package defines them but ships no migration) and the chat tables:
``user_profile``, ``instance``, ``instance_member``, ``conversation``,
``conversation_member`` and ``message``.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc_timestamp(name: str) -> sa.Column:
    # kilo_web.chat.models.UTCDateTime stores into this column type.
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _create_account_tables() -> None:
    op.create_table(
        "localuser",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.LargeBinary(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_localuser_username", "localuser", ["username"], unique=True)

    op.create_table(
        "localauthsession",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        # sa.func.now() renders as CURRENT_TIMESTAMP on both SQLite and PostgreSQL.
        sa.Column(
            "expiration",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_localauthsession_session_id", "localauthsession", ["session_id"], unique=True
    )
    op.create_index("ix_localauthsession_user_id", "localauthsession", ["user_id"], unique=False)

    op.create_table(
        "user_profile",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("local_user_id", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        # sa.false() renders as 0 on SQLite and false on PostgreSQL; a literal
        # text('0') would be rejected by PostgreSQL for a boolean column.
        sa.Column("is_bot", sa.Boolean(), server_default=sa.false(), nullable=False),
        _utc_timestamp("created_at"),
        sa.ForeignKeyConstraint(["local_user_id"], ["localuser.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("local_user_id", name="uq_user_profile_local_user_id"),
    )


def _create_chat_tables() -> None:
    op.create_table(
        "instance",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        _utc_timestamp("created_at"),
        sa.ForeignKeyConstraint(["owner_id"], ["user_profile.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_instance_owner_id", "instance", ["owner_id"], unique=False)

    op.create_table(
        "instance_member",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _utc_timestamp("joined_at"),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_id", "user_id"),
    )
    op.create_index("ix_instance_member_user_id", "instance_member", ["user_id"], unique=False)

    op.create_table(
        "conversation",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("last_message_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _utc_timestamp("created_at"),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_conversation_instance_id", "conversation", ["instance_id"], unique=False)

    op.create_table(
        "conversation_member",
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _utc_timestamp("joined_at"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user_profile.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("conversation_id", "user_id"),
    )
    op.create_index(
        "ix_conversation_member_user_id", "conversation_member", ["user_id"], unique=False
    )

    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sender_id", sa.Integer(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        _utc_timestamp("created_at"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sender_id"], ["user_profile.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_message_conversation_seq"),
    )
    op.create_index("ix_message_sender_id", "message", ["sender_id"], unique=False)


def upgrade() -> None:
    _create_account_tables()
    _create_chat_tables()


def downgrade() -> None:
    for table in (
        "message",
        "conversation_member",
        "conversation",
        "instance_member",
        "instance",
        "user_profile",
        "localauthsession",
        "localuser",
    ):
        # Dropping a table drops its indexes on SQLite and PostgreSQL alike.
        op.drop_table(table)

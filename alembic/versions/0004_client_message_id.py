"""Add the sender's client message id, unique per sender.

A client that repeats a post with the same ``client_message_id`` (a retry
after a timeout) gets the stored message back instead of a second one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("client_message_id", sa.String(64), nullable=True))
        batch.create_unique_constraint(
            "uq_message_sender_client_message_id", ["sender_id", "client_message_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_constraint("uq_message_sender_client_message_id", type_="unique")
        batch.drop_column("client_message_id")

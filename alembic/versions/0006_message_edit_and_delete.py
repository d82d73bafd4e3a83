"""Add the edit and soft-delete timestamps of a message.

``edited_at`` is set each time the sender changes the content.
``deleted_at`` is set once, when the sender deletes the message, and the
content is emptied at that moment. The row stays, so its ``seq`` and the
read state keep their meaning.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # kilo_web.chat.models.UTCDateTime stores into this column type.
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("edited_at")

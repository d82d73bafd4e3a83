"""Add the per-user token version that revokes event-service tokens.

Every event-service token carries the ``version`` of its user at the time
it was issued; the server rejects a token whose version is below the
user's current ``token_version``, so raising it revokes every older token.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user_profile") as batch:
        batch.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("user_profile") as batch:
        batch.drop_column("token_version")

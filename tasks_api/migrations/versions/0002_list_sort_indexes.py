"""Indexes for the list sorts by updated_at and by title.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_user_id_updated_at_id", "tasks", ["user_id", "updated_at", "id"])
    op.create_index(
        "ix_tasks_user_id_lower_title_id", "tasks", ["user_id", sa.text("lower(title)"), "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_user_id_lower_title_id", table_name="tasks")
    op.drop_index("ix_tasks_user_id_updated_at_id", table_name="tasks")

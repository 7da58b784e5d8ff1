"""The sync feed: a change counter per user, each task's change position, tombstones.

Every existing task gets a position of its own (its user's tasks numbered by creation),
and each user with tasks a counter at the highest, so the first sync after the upgrade
sees every task once and later writes continue the count. Keys start with user_id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "sync_positions",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_sync_positions")),
    )
    op.create_table(
        "task_tombstones",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "position", name=op.f("pk_task_tombstones")),
    )
    op.create_index(
        "ix_task_tombstones_deleted_at", "task_tombstones", ["deleted_at"], postgresql_using="brin"
    )
    # A default only to add the column to a table with rows; the app always sets it.
    op.add_column(
        "tasks",
        sa.Column("change_position", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.execute(
        "UPDATE tasks SET change_position = ranked.n FROM ("
        " SELECT user_id, id, row_number() OVER (PARTITION BY user_id ORDER BY created_at, id)"
        " AS n FROM tasks) AS ranked"
        " WHERE tasks.user_id = ranked.user_id AND tasks.id = ranked.id"
    )
    op.execute(
        "INSERT INTO sync_positions (user_id, position)"
        " SELECT user_id, max(change_position) FROM tasks GROUP BY user_id"
    )
    if dialect == "postgresql":  # SQLite would rebuild the table to drop it
        op.alter_column("tasks", "change_position", server_default=None)
    op.create_index("ix_tasks_user_id_change_position", "tasks", ["user_id", "change_position"])


def downgrade() -> None:
    op.drop_index("ix_tasks_user_id_change_position", table_name="tasks")
    # Plain ALTER TABLE, also on SQLite (3.35+): a batch rebuild would lose the
    # expression indexes.
    op.execute("ALTER TABLE tasks DROP COLUMN change_position")
    op.drop_index("ix_task_tombstones_deleted_at", table_name="task_tombstones")
    op.drop_table("task_tombstones")
    op.drop_table("sync_positions")

"""Tasks as people plan them: status, priority, due date, tags; keys that start with user_id.

Every existing task keeps its values and gets the status its `completed` says, priority
`medium`, no due date and no tags. Titles may grow to 500 characters, descriptions to
8000. The primary key becomes (user_id, id), so the table can be distributed by user.
The new sorts get one index each, the `tag` filter a GIN index (PostgreSQL).

On SQLite the table is rebuilt (Alembic's batch mode) to change its key and checks;
the expression indexes, which the rebuild cannot carry over, are dropped first and made
again after.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RANK = "(CASE priority WHEN 'low' THEN {} WHEN 'medium' THEN {} WHEN 'high' THEN {} WHEN 'urgent' THEN {} END)"  # noqa: E501
# The day number of due_date, as tasks_api.models.day_number compiles it.
_DAYS = {
    "postgresql": "(due_date - DATE '1970-01-01')",
    "sqlite": "CAST(julianday(due_date) - 2440587.5 AS INTEGER)",
}
CHECKS = {
    "completed_iff_done": "completed = (status = 'done')",
    "status_known": "status IN ('todo', 'in_progress', 'done')",
    "priority_known": "priority IN ('low', 'medium', 'high', 'urgent')",
}


def _sort_indexes(dialect: str) -> dict[str, str]:
    days = _DAYS[dialect]
    return {
        "ix_tasks_user_id_due_asc": f"coalesce(-{days}, -3000000)",
        "ix_tasks_user_id_due_desc": f"coalesce({days}, -3000000)",
        "ix_tasks_user_id_priority_asc": _RANK.format(-1, -2, -3, -4),
        "ix_tasks_user_id_priority_desc": _RANK.format(1, 2, 3, 4),
    }


def _list_type(dialect: str) -> sa.types.TypeEngine[Any]:
    return postgresql.ARRAY(sa.Text()) if dialect == "postgresql" else sa.JSON()


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    empty = "'{}'" if dialect == "postgresql" else "'[]'"
    op.drop_index("ix_tasks_user_id_lower_title_id", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("status", sa.String(11), server_default="todo", nullable=False))
        batch.add_column(
            sa.Column("priority", sa.String(6), server_default="medium", nullable=False)
        )
        batch.add_column(sa.Column("due_date", sa.Date(), nullable=True))
        for name in ("tags", "tag_keys"):
            batch.add_column(
                sa.Column(name, _list_type(dialect), server_default=sa.text(empty), nullable=False)
            )
    op.execute("UPDATE tasks SET status = 'done' WHERE completed")
    with op.batch_alter_table(
        "tasks", recreate="always" if dialect == "sqlite" else "auto"
    ) as batch:
        batch.alter_column("title", type_=sa.String(500), existing_nullable=False)
        batch.alter_column("description", type_=sa.String(8000), existing_nullable=True)
        batch.drop_constraint("pk_tasks", type_="primary")
        batch.create_primary_key("pk_tasks", ["user_id", "id"])
        for name, condition in CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_tasks_{name}"), condition)
    op.create_index(
        "ix_tasks_user_id_lower_title_id", "tasks", ["user_id", sa.text("lower(title)"), "id"]
    )
    for name, key in _sort_indexes(dialect).items():
        op.create_index(name, "tasks", ["user_id", sa.text(key), "created_at", "id"])
    if dialect == "postgresql":
        op.create_index("ix_tasks_tag_keys", "tasks", ["tag_keys"], postgresql_using="gin")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.drop_index("ix_tasks_tag_keys", table_name="tasks")
    for name in _sort_indexes(dialect):
        op.drop_index(name, table_name="tasks")
    op.drop_index("ix_tasks_user_id_lower_title_id", table_name="tasks")
    # What the older limits cannot hold is cut short rather than refused.
    op.execute("UPDATE tasks SET title = substr(title, 1, 200) WHERE length(title) > 200")
    op.execute(
        "UPDATE tasks SET description = substr(description, 1, 1000)"
        " WHERE length(description) > 1000"
    )
    with op.batch_alter_table(
        "tasks", recreate="always" if dialect == "sqlite" else "auto"
    ) as batch:
        for name in CHECKS:
            batch.drop_constraint(op.f(f"ck_tasks_{name}"), type_="check")
        batch.drop_constraint("pk_tasks", type_="primary")
        batch.create_primary_key("pk_tasks", ["id"])
        batch.alter_column("title", type_=sa.String(200), existing_nullable=False)
        batch.alter_column("description", type_=sa.String(1000), existing_nullable=True)
        for name in ("tag_keys", "tags", "due_date", "priority", "status"):
            batch.drop_column(name)
    op.create_index(
        "ix_tasks_user_id_lower_title_id", "tasks", ["user_id", sa.text("lower(title)"), "id"]
    )

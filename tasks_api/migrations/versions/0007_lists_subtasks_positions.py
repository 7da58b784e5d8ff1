"""Lists, subtasks and a manual order; the user's counts that the limits need.

Every existing task stays where it was, in the inbox (no list) and top-level, and gets a
position in its user's inbox in creation order: the order new tasks keep from now on,
since each goes last, so old and new tasks read as one sequence. Each existing task also
gets a new change position (after its user's counter, which moves past them): a client
that synced before this upgrade receives every task once more, with its new fields;
versions do not change. Each user's row gets the count of their tasks.

On PostgreSQL a subtask's parent_id refers to top_level_id, the parent's id while it is
top-level (a generated column): the database itself refuses a second level. SQLite
cannot add a stored generated column to a table, so there it is a virtual one; it needs
no foreign key (it has one writer at a time). Keys start with user_id.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOP_LEVEL_ID = "CASE WHEN parent_id IS NULL THEN id END"
# The manual order's indexes: the inbox's top-level tasks, a list's, a task's subtasks.
POSITION_INDEXES = [
    (
        "ix_tasks_inbox_position",
        ["user_id", "position", "id"],
        "parent_id IS NULL AND list_id IS NULL",
    ),
    (
        "ix_tasks_user_id_list_id_position",
        ["user_id", "list_id", "position", "id"],
        "parent_id IS NULL AND list_id IS NOT NULL",
    ),
    (
        "ix_tasks_user_id_parent_id_position",
        ["user_id", "parent_id", "position", "id"],
        "parent_id IS NOT NULL",
    ),
]
# tasks_api/positions.py: the key of rank n (from 0) in a respaced group.
_NTH = {
    "postgresql": "lpad((5000000000 + {n})::text, 10, '0')",
    "sqlite": "printf('%010d', 5000000000 + {n})",
}


def _position_type(dialect: str) -> sa.String:
    return sa.String(64, collation="C") if dialect == "postgresql" else sa.String(64)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("sync_positions") as batch:
        batch.add_column(sa.Column("tasks", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("lists", sa.Integer(), server_default="0", nullable=False))
        batch.create_check_constraint(op.f("ck_sync_positions_tasks_not_negative"), "tasks >= 0")
        batch.create_check_constraint(op.f("ck_sync_positions_lists_not_negative"), "lists >= 0")

    op.add_column("tasks", sa.Column("list_id", sa.Uuid(), nullable=True))
    op.add_column("tasks", sa.Column("parent_id", sa.Uuid(), nullable=True))
    if dialect == "postgresql":
        op.add_column("tasks", sa.Column("position", _position_type(dialect), nullable=True))
        op.add_column(
            "tasks",
            sa.Column("top_level_id", sa.Uuid(), sa.Computed(TOP_LEVEL_ID, persisted=True)),
        )
    else:
        # SQLite adds a NOT NULL column only with a default (the app always sets it), and
        # a generated one only as VIRTUAL.
        op.execute("ALTER TABLE tasks ADD COLUMN position VARCHAR(64) NOT NULL DEFAULT ''")
        op.execute(
            f"ALTER TABLE tasks ADD COLUMN top_level_id CHAR(32) GENERATED ALWAYS AS"
            f" ({TOP_LEVEL_ID}) VIRTUAL"
        )
    op.execute(
        "INSERT INTO sync_positions (user_id, position, tasks, lists)"
        " SELECT DISTINCT user_id, 0, 0, 0 FROM tasks"
        " WHERE user_id NOT IN (SELECT user_id FROM sync_positions)"
    )
    nth = _NTH[dialect].format(n="ranked.n - 1")
    op.execute(
        f"UPDATE tasks SET position = {nth},"
        " change_position = ranked.counter + ranked.n FROM ("
        " SELECT t.user_id, t.id, c.position AS counter,"
        "  row_number() OVER (PARTITION BY t.user_id ORDER BY t.created_at, t.id) AS n"
        " FROM tasks t JOIN sync_positions c ON c.user_id = t.user_id) AS ranked"
        " WHERE tasks.user_id = ranked.user_id AND tasks.id = ranked.id"
    )
    op.execute(
        "UPDATE sync_positions SET position = position + counted.n, tasks = counted.n FROM ("
        " SELECT user_id, count(*) AS n FROM tasks GROUP BY user_id) AS counted"
        " WHERE sync_positions.user_id = counted.user_id"
    )
    if dialect == "postgresql":
        op.alter_column("tasks", "position", nullable=False)
        op.create_unique_constraint(
            "uq_tasks_user_id_top_level_id", "tasks", ["user_id", "top_level_id"]
        )
        op.create_foreign_key(
            "fk_tasks_user_id_parent_id_tasks",
            "tasks",
            "tasks",
            ["user_id", "parent_id"],
            ["user_id", "top_level_id"],
        )
    for name, columns, where in POSITION_INDEXES:
        op.create_index(
            name,
            "tasks",
            columns,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )

    op.create_table(
        "lists",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("position", _position_type(dialect), nullable=False),
        sa.Column("open_tasks", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("change_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "id", name=op.f("pk_lists")),
        sa.CheckConstraint("open_tasks >= 0", name=op.f("ck_lists_open_tasks_not_negative")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_lists_version_positive")),
    )
    op.create_index("ix_lists_user_id_position_id", "lists", ["user_id", "position", "id"])
    op.create_index("ix_lists_user_id_change_position", "lists", ["user_id", "change_position"])
    op.create_table(
        "list_tombstones",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "position", name=op.f("pk_list_tombstones")),
    )
    op.create_index(
        "ix_list_tombstones_deleted_at", "list_tombstones", ["deleted_at"], postgresql_using="brin"
    )
    op.add_column("idempotency_keys", sa.Column("resource", sa.String(4), nullable=True))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    # Records the previous version would replay as they are: only its own kind.
    op.execute("DELETE FROM idempotency_keys WHERE resource IS NOT NULL")
    op.drop_column("idempotency_keys", "resource")
    op.drop_index("ix_list_tombstones_deleted_at", table_name="list_tombstones")
    op.drop_table("list_tombstones")
    op.drop_index("ix_lists_user_id_change_position", table_name="lists")
    op.drop_index("ix_lists_user_id_position_id", table_name="lists")
    op.drop_table("lists")
    for name, _, _ in POSITION_INDEXES:
        op.drop_index(name, table_name="tasks")
    if dialect == "postgresql":
        op.drop_constraint("fk_tasks_user_id_parent_id_tasks", "tasks", type_="foreignkey")
        op.drop_constraint("uq_tasks_user_id_top_level_id", "tasks", type_="unique")
    # Plain ALTER TABLE, also on SQLite (3.35+): a batch rebuild would lose the
    # expression indexes. Every task is then a top-level task again, in no list.
    for column in ("top_level_id", "position", "parent_id", "list_id"):
        op.execute(f"ALTER TABLE tasks DROP COLUMN {column}")
    with op.batch_alter_table("sync_positions") as batch:
        batch.drop_constraint(op.f("ck_sync_positions_lists_not_negative"), type_="check")
        batch.drop_constraint(op.f("ck_sync_positions_tasks_not_negative"), type_="check")
        batch.drop_column("lists")
        batch.drop_column("tasks")

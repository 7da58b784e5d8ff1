"""Bound every statement's time on PostgreSQL: lock_timeout 4 s, statement_timeout 5 s.

Set on the database, not per connection: Neon's pooler (PgBouncer in transaction mode)
rejects startup `options` and would hand a session-level `SET` on to other clients,
while a database default is applied by the server to every backend it starts, pooled or
not. A statement stuck behind a row lock or running long ends with an error the app
answers as 503 + Retry-After, inside the 20 s a request may take. Operators can
override either with `ALTER DATABASE ... SET` (see docs/deployment.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every statement here is a single-row write or an index range scan (milliseconds). The
# worst request, a keyed create, waits for a pooled connection (DB_POOL_TIMEOUT, 5 s) and
# a key set (3 s), then runs two statements: 5 + 3 + 5 + 5 = 18 s, inside the 20 s
# (statement_timeout counts lock waits too; lock_timeout names them sooner).
TIMEOUTS = {"lock_timeout": "4s", "statement_timeout": "5s"}


def _alter_database(action: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: a writer waits for the file lock up to DB_POOL_TIMEOUT instead
    for name, value in TIMEOUTS.items():
        # Quoted twice: the clause sits inside the string literal that format() takes.
        clause = f"SET {name} = ''{value}''" if action == "set" else f"RESET {name}"
        # ALTER DATABASE takes no parameters: current_database() is spliced in by format().
        op.execute(
            f"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {clause}', current_database()); END $$"
        )


def upgrade() -> None:
    _alter_database("set")


def downgrade() -> None:
    _alter_database("reset")

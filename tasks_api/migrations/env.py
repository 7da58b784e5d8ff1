"""Alembic environment: runs on the connection `tasks_api.db` hands over."""

from alembic import context

from tasks_api.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite can alter a table only by copying it.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment: runs on the connection `tasks_api.db` hands over."""

from alembic import context

from tasks_api.models import Base, compared_by_autogenerate

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite can alter a table only by copying it.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=lambda *args: compared_by_autogenerate(*args, dialect=connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()

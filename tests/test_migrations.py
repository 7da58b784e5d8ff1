"""`flask db ...` (the Procfile's release step) builds exactly the schema of the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL

from tasks_api import create_app, db
from tasks_api.config import Settings
from tasks_api.models import Base
from tests.support import (
    BACKENDS,
    SECRET,
    drop_postgres_database,
    scratch_postgres_database,
)

UNREACHABLE = "postgresql://app:pw@127.0.0.1:1/tasks"


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Flask, URL]]:
    """An app on an empty database, and that database's URL."""
    if request.param == "sqlite":
        app = create_app(Settings(), instance_path=str(tmp_path))
        yield app, db.sqlite_url(str(tmp_path))
        return
    url, name = scratch_postgres_database("tasks_api_migrations")
    # The app's own (pooled) URL is unreachable: only the direct one can migrate.
    settings = Settings.from_env(
        {
            "DATABASE_URL": UNREACHABLE,
            "DATABASE_URL_UNPOOLED": url.render_as_string(False),
            "AUTH_JWT_SECRET": SECRET,
        }
    )
    yield create_app(settings, instance_path=str(tmp_path)), url
    drop_postgres_database(name)


def flask_db(app: Flask, *args: str) -> None:
    result = app.test_cli_runner().invoke(args=["db", *args])
    assert result.exit_code == 0, result.output
    assert "pw@" not in result.output


def test_migrations_match_the_models_and_downgrade_cleanly(fresh: tuple[Flask, URL]) -> None:
    app, url = fresh
    engine = create_engine(url)
    try:
        flask_db(app, "upgrade")
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("tasks")}
            assert "ix_tasks_user_id_created_at_id" in indexes

        flask_db(app, "downgrade", "base")
        with engine.connect() as conn:
            assert "tasks" not in inspect(conn).get_table_names()

        flask_db(app, "upgrade")
        with engine.connect() as conn:
            assert "tasks" in inspect(conn).get_table_names()
    finally:
        engine.dispose()

"""Through PgBouncer in transaction mode with TLS, as on Neon (the whole suite also runs
there as the `pgbouncer` backend); here, what only the pooler shows."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import text

from tasks_api import db


@pytest.fixture
def pooled(app: Flask, backend: str) -> Flask:
    if backend != "pgbouncer":
        pytest.skip("only through the pooler")
    return app


def test_the_app_talks_to_the_pooler_over_tls(pooled: Flask) -> None:
    settings = pooled.extensions["tasks_api.settings"]
    with pooled.app_context():
        conn = db.connection()
        info = conn.connection.driver_connection.info  # type: ignore[union-attr]
        assert info.port == settings.database_url.port  # the pooler's port, not 5432
        assert info.pgconn.ssl_in_use
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_migrations_used_the_direct_url(pooled: Flask) -> None:
    settings = pooled.extensions["tasks_api.settings"]

    assert settings.migration_url.port != settings.database_url.port
    assert "sslmode" not in settings.migration_url.query

"""Fixtures: the whole suite runs once on PostgreSQL and once on SQLite.

PostgreSQL: a database of its own is created for the run on the server at
TEST_POSTGRES_URL (default: the local one) and dropped afterwards; when it is not there
or refuses the login, on a throwaway cluster started from the local PostgreSQL binaries;
with neither, only the SQLite tests run, and the report says what it found and why
(tests.support._find_postgres). SQLite: the embedded mode, in a temporary instance
folder. pgbouncer (when PgBouncer is installed): the same PostgreSQL database through
PgBouncer in transaction mode with TLS, as Neon's pooler. TEST_DATABASES=sqlite (or
postgresql, pgbouncer) runs some of them.

The apps verify HS256 tokens made with tests.support.SECRET, and the `client` acts
as the user of each /api path it calls (tests.support.UserClient).

Tests are isolated by data rather than by rollback: every test works as its own
user (`user_id` fixture), and every route is scoped to one user, so tests never see
each other's rows while the app commits exactly as it does in production.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import URL

from tasks_api import create_app, db
from tasks_api.config import Settings
from tests.support import (
    BACKENDS,
    POSTGRES_NOTE,
    REQUIRED,
    PgBouncer,
    UserClient,
    drop_postgres_database,
    free_port,
    scratch_postgres_database,
    start_gunicorn,
)


def pytest_report_header() -> str:
    return POSTGRES_NOTE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "postgresql" not in BACKENDS:
        terminalreporter.write_line(POSTGRES_NOTE, yellow=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[URL]:
    url, name = scratch_postgres_database("tasks_api_test")
    yield url
    drop_postgres_database(name)


@pytest.fixture(scope="session")
def pgbouncer(postgres_url: URL) -> Iterator[PgBouncer]:
    pooler = PgBouncer(postgres_url)
    yield pooler
    pooler.stop()


def make_app(backend: str, instance_path: Path, request: pytest.FixtureRequest) -> Flask:
    env = dict(REQUIRED)
    if backend in ("postgresql", "pgbouncer"):
        url: URL = request.getfixturevalue("postgres_url")
        env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    if backend == "pgbouncer":
        # As on Neon: the app through the pooler, migrations on the direct URL. Debian's
        # PgBouncer 1.18 cannot keep protocol-level prepared statements: turn them off.
        pooler: PgBouncer = request.getfixturevalue("pgbouncer")
        env["DATABASE_URL_UNPOOLED"] = env["DATABASE_URL"]
        env["DATABASE_URL"] = pooler.url(url.database or "").render_as_string(False)
        env["DB_PREPARE_THRESHOLD"] = "none"
    settings = Settings.from_env(env)
    if settings.migration_url is not None:
        db.upgrade(settings.migration_url)
    app = create_app(settings, instance_path=str(instance_path))
    app.config["TESTING"] = True
    app.test_client_class = UserClient
    app.config["TEST_BACKEND"] = backend
    return app


@pytest.fixture(scope="session", params=BACKENDS)
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    app = make_app(request.param, tmp_path_factory.mktemp("instance"), request)
    yield app
    app.extensions["tasks_api.engine"].dispose()


@pytest.fixture
def backend(app: Flask) -> str:
    """postgresql, sqlite, or pgbouncer (PostgreSQL through the pooler)."""
    name: str = app.config["TEST_BACKEND"]
    return name


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def user_id() -> str:
    return f"user-{uuid.uuid4().hex}"


@pytest.fixture
def tasks_url(user_id: str) -> str:
    return f"/api/{user_id}/tasks"


@pytest.fixture
def task(client: FlaskClient, tasks_url: str) -> dict[str, Any]:
    response = client.post(tasks_url, json={"title": "Buy milk", "description": "Two litres"})
    assert response.status_code == 201
    body: dict[str, Any] = response.get_json()
    return body


@pytest.fixture
def task_url(tasks_url: str, task: dict[str, Any]) -> str:
    return f"{tasks_url}/{task['id']}"


@pytest.fixture
def instances_database() -> Iterator[URL]:
    """A scratch PostgreSQL database of its own, migrated, for app instances to share."""
    if "postgresql" not in BACKENDS:
        pytest.skip("TEST_DATABASES excludes postgresql")
    url, name = scratch_postgres_database("tasks_api_instances")
    db.upgrade(url.set(drivername="postgresql+psycopg"))
    yield url
    drop_postgres_database(name)


@pytest.fixture
def two_instances(instances_database: URL) -> Iterator[list[int]]:
    """Two gunicorn processes (one worker each) on different ports, one PostgreSQL."""
    env = {
        **REQUIRED,
        "DATABASE_URL": instances_database.render_as_string(hide_password=False),
        "WEB_CONCURRENCY": "1",
    }
    processes = []
    try:
        ports = [free_port(), free_port()]
        processes = [start_gunicorn(env, port, subprocess.DEVNULL) for port in ports]
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

"""Fixtures: the whole suite runs once on PostgreSQL and once on SQLite.

PostgreSQL: a database of its own is created for the run on the server at
TEST_POSTGRES_URL (default: the local one) and dropped afterwards. SQLite: the
embedded mode, in a temporary instance folder. TEST_DATABASES=sqlite (or postgresql)
runs one of the two.

The apps verify HS256 tokens made with tests.support.SECRET, and the `client` acts
as the user of each /api path it calls (tests.support.UserClient).

Tests are isolated by data rather than by rollback: every test works as its own
user (`user_id` fixture), and every route is scoped to one user, so tests never see
each other's rows while the app commits exactly as it does in production.
"""

from __future__ import annotations

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
    REQUIRED,
    UserClient,
    drop_postgres_database,
    scratch_postgres_database,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[URL]:
    url, name = scratch_postgres_database("tasks_api_test")
    yield url
    drop_postgres_database(name)


def make_app(backend: str, instance_path: Path, request: pytest.FixtureRequest) -> Flask:
    env = dict(REQUIRED)
    if backend == "postgresql":
        url: URL = request.getfixturevalue("postgres_url")
        env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    settings = Settings.from_env(env)
    if settings.migration_url is not None:
        db.upgrade(settings.migration_url)
    app = create_app(settings, instance_path=str(instance_path))
    app.config["TESTING"] = True
    app.test_client_class = UserClient
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
    return "sqlite" if app.extensions["tasks_api.settings"].embedded else "postgresql"


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

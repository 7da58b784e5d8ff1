"""What a deployer sees when the database is not right: behind the code, unreachable, or
(embedded) readable by others."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.engine import URL

from tasks_api import create_app, db
from tasks_api.config import Settings
from tests.support import (
    REQUIRED,
    SECRET,
    UserClient,
    assert_problem,
    drop_postgres_database,
    free_port,
    scratch_postgres_database,
    start_gunicorn,
)

UPGRADE = "run `flask --app wsgi db upgrade`"


@pytest.fixture
def behind(backend: str, tmp_path: Path) -> Iterator[tuple[Flask, URL]]:
    """An app on a database of its own, and that database's URL to migrate it with."""
    if backend == "pgbouncer":
        pytest.skip("migrations do not go through the pooler")
    if backend == "sqlite":
        settings = Settings.from_env({"AUTH_JWT_SECRET": SECRET})
        app = create_app(settings, instance_path=str(tmp_path))
        app.test_client_class = UserClient
        yield app, db.sqlite_url(str(tmp_path))
        return
    url, name = scratch_postgres_database("tasks_api_behind")
    settings = Settings.from_env({"DATABASE_URL": url.render_as_string(False), **REQUIRED})
    app = create_app(settings, instance_path=str(tmp_path))
    app.test_client_class = UserClient
    yield app, url
    app.extensions["tasks_api.engine"].dispose()
    drop_postgres_database(name)


def test_a_database_never_migrated_answers_503_naming_the_command(
    behind: tuple[Flask, URL],
) -> None:
    app, url = behind
    db.downgrade(url, "base")  # the embedded file migrates itself at start: undo it
    client = app.test_client()

    for response in (
        client.get("/health/ready"),
        client.get("/api/alice/tasks"),
        client.post("/api/alice/tasks", json={"title": "Buy milk"}),
    ):
        problem = assert_problem(response, 503)
        assert problem["detail"].startswith("The database schema is at revision (none) but")
        assert UPGRADE in problem["detail"]
        assert int(response.headers["Retry-After"]) >= 1

    db.upgrade(url)
    assert client.get("/health/ready").status_code == 200
    assert client.post("/api/alice/tasks", json={"title": "Buy milk"}).status_code == 201


def test_a_database_one_migration_behind_is_not_ready(behind: tuple[Flask, URL]) -> None:
    app, url = behind
    db.upgrade(url)
    db.downgrade(url, "-1")

    problem = assert_problem(app.test_client().get("/health/ready"), 503)

    assert f"at revision {int(db.HEAD_REVISION) - 1:04d}" in problem["detail"]
    assert f"needs {db.HEAD_REVISION}: {UPGRADE}" in problem["detail"]


def test_head_revision_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [db.HEAD_REVISION]


def test_gunicorn_names_a_database_behind_the_code_at_start(backend: str, tmp_path: Path) -> None:
    if backend != "postgresql":
        pytest.skip("the embedded database migrates itself at start")
    url, name = scratch_postgres_database("tasks_api_start")
    log_path = tmp_path / "gunicorn.log"
    env = {**REQUIRED, "DATABASE_URL": url.render_as_string(False), "WEB_CONCURRENCY": "1"}
    try:
        with log_path.open("w") as log:
            process = start_gunicorn(env, free_port(), log)
            process.terminate()
            process.wait(timeout=30)
    finally:
        drop_postgres_database(name)

    logged = log_path.read_text()
    assert "The database schema is at revision (none) but this version of the service " in logged
    assert f"needs {db.HEAD_REVISION}: {UPGRADE}" in logged
    assert "Traceback" not in logged


def test_embedded_mode_keeps_its_files_to_this_user(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    app = create_app(Settings.from_env({"AUTH_JWT_SECRET": SECRET}), instance_path=str(instance))
    app.test_client_class = UserClient
    assert app.test_client().post("/api/alice/tasks", json={"title": "x"}).status_code == 201

    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    files = [path for path in instance.iterdir() if path.is_file()]
    assert {"tasks.sqlite3", "tasks.sqlite3-wal", "secret-key"} <= {path.name for path in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_the_instance_folder_comes_from_instance_path(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUTH_"))}
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi; print(wsgi.app.instance_path)"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**env, "INSTANCE_PATH": str(tmp_path / "elsewhere")},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.splitlines()[-1] == str(tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "tasks.sqlite3").exists()

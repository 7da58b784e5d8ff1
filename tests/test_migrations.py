"""`flask db ...` (the Procfile's release step) builds exactly the schema of the models."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import URL

from tasks_api import create_app, db, sync
from tasks_api.config import Settings
from tasks_api.models import Base, compared_by_autogenerate
from tests.support import (
    BACKENDS,
    REQUIRED,
    SECRET,
    UserClient,
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
            **REQUIRED,
        }
    )
    yield create_app(settings, instance_path=str(tmp_path)), url
    drop_postgres_database(name)


def index_names(conn: Connection) -> set[str]:
    if conn.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix\\_%'"
    return set(conn.execute(text(query)).scalars())


def serve(url: URL, instance: Path) -> Flask:
    """The app on the database at `url`, its client acting as the user in each path."""
    env = (
        {"DATABASE_URL": url.render_as_string(False), **REQUIRED}
        if url.get_backend_name() == "postgresql"
        else {"AUTH_JWT_SECRET": SECRET}
    )
    app = create_app(Settings.from_env(env), instance_path=str(instance))
    app.test_client_class = UserClient
    return app


def flask_db(app: Flask, *args: str) -> None:
    result = app.test_cli_runner().invoke(args=["db", *args])
    assert result.exit_code == 0, result.output
    assert "pw@" not in result.output


def schema_differences(conn: Connection) -> list[Any]:
    """What autogenerate sees between the models and the database: `flask db revision`'s
    own comparison (models.compared_by_autogenerate leaves out the indexes it cannot
    compare; test_listing.py checks those)."""
    dialect = conn.dialect.name
    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "include_object": lambda *a: compared_by_autogenerate(*a, dialect=dialect),
        },
    )
    return list(compare_metadata(context, Base.metadata))


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping")
def test_migrations_match_the_models_and_downgrade_cleanly(fresh: tuple[Flask, URL]) -> None:
    app, url = fresh
    engine = create_engine(url)
    try:
        flask_db(app, "upgrade")
        with engine.connect() as conn:
            assert schema_differences(conn) == []
            assert index_names(conn) == {
                "ix_idempotency_keys_created_at",
                "ix_tasks_user_id_created_at_id",
                "ix_tasks_user_id_updated_at_id",
                "ix_tasks_user_id_lower_title_id",
                "ix_tasks_user_id_due_asc",
                "ix_tasks_user_id_due_desc",
                "ix_tasks_user_id_priority_asc",
                "ix_tasks_user_id_priority_desc",
                "ix_tasks_user_id_change_position",
                "ix_tasks_inbox_position",
                "ix_tasks_user_id_list_id_position",
                "ix_tasks_user_id_parent_id_position",
                "ix_task_tombstones_deleted_at",
                "ix_lists_user_id_position_id",
                "ix_lists_user_id_change_position",
                "ix_list_tombstones_deleted_at",
            } | ({"ix_tasks_tag_keys"} if conn.dialect.name == "postgresql" else set())

        flask_db(app, "downgrade", "base")
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == ["alembic_version"]

        flask_db(app, "upgrade")
        with engine.connect() as conn:
            assert "tasks" in inspect(conn).get_table_names()
    finally:
        engine.dispose()


def at_0004(app: Flask, url: URL) -> None:
    # The embedded app has migrated its file to the head already.
    flask_db(app, "downgrade" if url.get_backend_name() == "sqlite" else "upgrade", "0004")


OLD_TASKS = [
    # id, title, description, completed
    (uuid.UUID(int=1), "open", None, False),
    (uuid.UUID(int=2), "finished", "with notes", True),
]


def test_0005_keeps_every_task_and_downgrades_with_them(fresh: tuple[Flask, URL]) -> None:
    app, url = fresh
    engine = create_engine(url)
    moment = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    try:
        at_0004(app, url)
        with engine.begin() as conn:
            for task_id, title, description, completed in OLD_TASKS:
                conn.execute(
                    text(
                        "INSERT INTO tasks (id, user_id, title, description, completed,"
                        " completed_at, created_at, updated_at, version)"
                        " VALUES (:id, 'alice', :title, :description, :completed,"
                        " :completed_at, :at, :at, 3)"
                    ),
                    {
                        "id": task_id.hex if conn.dialect.name == "sqlite" else task_id,
                        "title": title,
                        "description": description,
                        "completed": completed,
                        "completed_at": moment if completed else None,
                        "at": moment,
                    },
                )

        flask_db(app, "upgrade")
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT title, description, completed, status, priority, due_date, tags,"
                    " tag_keys, version FROM tasks ORDER BY title"
                )
            ).all()
        empty: Any = "[]" if engine.dialect.name == "sqlite" else []
        assert [tuple(row) for row in rows] == [
            ("finished", "with notes", True, "done", "medium", None, empty, empty, 3),
            ("open", None, False, "todo", "medium", None, empty, empty, 3),
        ]

        flask_db(app, "downgrade", "0004")
        with engine.connect() as conn:
            kept = conn.execute(
                text("SELECT title, description, completed, version FROM tasks ORDER BY title")
            ).all()
        assert [tuple(row) for row in kept] == [
            ("finished", "with notes", True, 3),
            ("open", None, False, 3),
        ]
    finally:
        engine.dispose()


def test_tasks_from_before_0005_read_and_change_through_the_api(
    fresh: tuple[Flask, URL], tmp_path: Path
) -> None:
    app, url = fresh
    engine = create_engine(url)
    try:
        at_0004(app, url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tasks (id, user_id, title, completed, completed_at, created_at,"
                    " updated_at, version) VALUES (:id, 'alice', 'old', true, :at, :at, :at, 1)"
                ),
                {"id": uuid.UUID(int=7).hex, "at": datetime(2026, 1, 1, tzinfo=UTC)},
            )
        flask_db(app, "upgrade")
    finally:
        engine.dispose()
    served = serve(url, tmp_path)
    client = served.test_client()
    task_url = f"/api/alice/tasks/{uuid.UUID(int=7)}"

    task = client.get(task_url).get_json()
    assert (task["status"], task["priority"], task["due_date"], task["tags"]) == (
        "done",
        "medium",
        None,
        [],
    )
    moved = client.put(task_url, json={"status": "in_progress", "tags": ["kept"]}).get_json()
    assert (moved["completed"], moved["tags"], moved["version"]) == (False, ["kept"], 2)
    assert [t["id"] for t in client.get("/api/alice/tasks?tag=KEPT").get_json()] == [task["id"]]
    served.extensions["tasks_api.engine"].dispose()


def test_tasks_from_before_0006_each_get_a_position_and_sync_once(
    fresh: tuple[Flask, URL], tmp_path: Path
) -> None:
    app, url = fresh
    engine = create_engine(url)
    try:
        flask_db(app, "downgrade" if url.get_backend_name() == "sqlite" else "upgrade", "0005")
        with engine.begin() as conn:
            for n in range(3):
                conn.execute(
                    text(
                        "INSERT INTO tasks (id, user_id, title, completed, created_at,"
                        " updated_at, version) VALUES (:id, 'alice', :title, false, :at, :at, 1)"
                    ),
                    {
                        "id": uuid.UUID(int=10 + n).hex,
                        "title": f"old {n}",
                        "at": datetime(2026, 1, 1 + n, tzinfo=UTC),
                    },
                )
        flask_db(app, "upgrade", "0006")
        with engine.connect() as conn:
            positions = conn.execute(
                text("SELECT title, change_position FROM tasks ORDER BY title")
            ).all()
            counter = conn.execute(text("SELECT user_id, position FROM sync_positions")).all()
        assert [tuple(row) for row in positions] == [("old 0", 1), ("old 1", 2), ("old 2", 3)]
        assert [tuple(row) for row in counter] == [("alice", 3)]
        flask_db(app, "upgrade")
    finally:
        engine.dispose()
    served = serve(url, tmp_path)
    client = served.test_client()
    first = client.get("/api/alice/tasks/changes?limit=2").get_json()
    rest = client.get(f"/api/alice/tasks/changes?since={first['next']}").get_json()
    assert [t["title"] for t in first["changes"] + rest["changes"]] == ["old 0", "old 1", "old 2"]
    client.put(f"/api/alice/tasks/{uuid.UUID(int=10)}", json={"title": "new"})
    after = client.get(f"/api/alice/tasks/changes?since={rest['next']}").get_json()
    assert [t["title"] for t in after["changes"]] == ["new"]
    served.extensions["tasks_api.engine"].dispose()


def test_0007_puts_tasks_from_before_in_their_inbox_in_creation_order(
    fresh: tuple[Flask, URL], tmp_path: Path
) -> None:
    app, url = fresh
    engine = create_engine(url)
    try:
        flask_db(app, "downgrade" if url.get_backend_name() == "sqlite" else "upgrade", "0006")
        with engine.begin() as conn:
            for n, user in enumerate(["alice", "bob", "alice", "alice"]):
                conn.execute(
                    text(
                        "INSERT INTO tasks (id, user_id, title, completed, created_at,"
                        " updated_at, version, change_position)"
                        " VALUES (:id, :user, :title, false, :at, :at, 1, :n)"
                    ),
                    {
                        "id": uuid.UUID(int=20 + n).hex,
                        "user": user,
                        "title": f"{user} {n}",
                        "at": datetime(2026, 1, 1 + n, tzinfo=UTC),
                        "n": n + 1,
                    },
                )
            conn.execute(
                text(
                    "INSERT INTO sync_positions (user_id, position) VALUES ('alice', 4), ('bob', 2)"
                )
            )
        flask_db(app, "upgrade")
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT title, position, list_id, parent_id FROM tasks ORDER BY title")
            ).all()
            counters = conn.execute(
                text("SELECT user_id, tasks, lists FROM sync_positions ORDER BY user_id")
            ).all()
        assert [tuple(row) for row in rows] == [
            ("alice 0", "5000000000", None, None),
            ("alice 2", "5000000001", None, None),
            ("alice 3", "5000000002", None, None),
            ("bob 1", "5000000000", None, None),
        ]
        assert [tuple(row) for row in counters] == [("alice", 3, 0), ("bob", 1, 0)]
    finally:
        engine.dispose()
    served = serve(url, tmp_path)
    client = served.test_client()
    with served.app_context():  # a client that had synced everything before the upgrade
        token = sync.issue("alice", sync.Since(4, 4, int(time.time())))
    # It gets each of its tasks once more, with the new fields; versions are unchanged.
    again = client.get(f"/api/alice/tasks/changes?since={token}").get_json()
    assert sorted(task["title"] for task in again["changes"]) == ["alice 0", "alice 2", "alice 3"]
    assert {task["version"] for task in again["changes"]} == {1}
    made = client.post("/api/alice/tasks", json={"title": "new"}).get_json()
    assert made["position"] > "5000000002"  # last, after them
    order = client.get("/api/alice/tasks?list=inbox&sort=position").get_json()
    assert [task["title"] for task in order] == ["alice 0", "alice 2", "alice 3", "new"]
    served.extensions["tasks_api.engine"].dispose()


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_0007_downgrades_keeping_every_task_as_a_top_level_inbox_task(
    fresh: tuple[Flask, URL], tmp_path: Path
) -> None:
    app, url = fresh
    flask_db(app, "upgrade")
    served = serve(url, tmp_path)
    client = served.test_client()
    made = client.post("/api/alice/lists", json={"title": "L"}).get_json()
    parent = client.post("/api/alice/tasks", json={"title": "p", "list_id": made["id"]})
    client.post("/api/alice/tasks", json={"title": "s", "parent_id": parent.get_json()["id"]})
    client.post("/api/alice/lists", json={"title": "K"}, headers={"Idempotency-Key": "k"})
    served.extensions["tasks_api.engine"].dispose()

    flask_db(app, "downgrade", "0006")

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert sorted(conn.execute(text("SELECT title FROM tasks")).scalars()) == ["p", "s"]
            assert "lists" not in inspect(conn).get_table_names()
            columns = {c["name"] for c in inspect(conn).get_columns("tasks")}
            assert not columns & {"list_id", "parent_id", "position", "top_level_id"}
            assert conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar() == 0
    finally:
        engine.dispose()
    flask_db(app, "upgrade")  # and up again, with the tasks there

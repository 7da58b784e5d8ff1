"""Responses are encoded by `dump_task`; TaskSchema documents them. The two must agree."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks_api import db
from tasks_api.repository import listing as repository
from tasks_api.schemas.fields import rfc3339
from tasks_api.schemas.tasks import TaskSchema, dump_task

SCHEMA = TaskSchema()


def row(**overrides: Any) -> dict[str, Any]:
    now = datetime(2026, 11, 25, 14, 3, 7, 123456, tzinfo=UTC)
    return {
        "id": uuid.uuid4(),
        "user_id": "alice",
        "title": "Buy milk",
        "description": "Two litres",
        "completed": False,
        "status": "todo",
        "priority": "medium",
        "due_date": None,
        "tags": [],
        "list_id": None,
        "parent_id": None,
        "position": "5000000000",
        "completed_at": None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
        **overrides,
    }


CET = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    "task",
    [
        pytest.param(row(), id="plain"),
        pytest.param(row(description=None), id="no-description"),
        pytest.param(
            row(status="in_progress", priority="urgent", due_date=date(2026, 12, 1)),
            id="planned",
        ),
        pytest.param(row(due_date=date(1, 1, 1), tags=["Ünï", "a b", "x" * 50]), id="tags"),
        pytest.param(
            row(list_id=uuid.uuid4(), parent_id=uuid.uuid4(), position="4" + "9" * 63),
            id="subtask-in-a-list",
        ),
        pytest.param(
            row(completed=True, status="done", completed_at=datetime(2026, 1, 1, tzinfo=UTC)),
            id="completed-on-a-whole-second",
        ),
        pytest.param(
            row(created_at=datetime(2026, 3, 29, 2, 30, 0, 1, tzinfo=CET)), id="other-time-zone"
        ),
        pytest.param(
            row(updated_at=datetime(1, 1, 1, tzinfo=UTC), version=2**31 - 1), id="extremes"
        ),
        pytest.param(row(title='Ünïcödé 🚀 \u2028 "quoted" \\', user_id="a|b@c"), id="text"),
    ],
)
def test_dump_task_is_what_the_schema_dumps(task: dict[str, Any]) -> None:
    assert dump_task(task) == SCHEMA.dump(task)
    assert list(dump_task(task)) == list(SCHEMA.fields)  # same members, same order


def test_rfc3339_is_utc_with_microseconds() -> None:
    assert rfc3339(datetime(2026, 11, 25, 14, 3, 7, tzinfo=UTC)) == "2026-11-25T14:03:07.000000Z"
    assert rfc3339(datetime(2026, 11, 25, 15, 3, 7, 5, tzinfo=CET)) == "2026-11-25T14:03:07.000005Z"


def test_rows_as_the_database_returns_them_dump_the_same(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    client.post(tasks_url, json={"title": "open", "description": None})
    client.post(tasks_url, json={"title": "done", "description": "é", "completed": True})
    with app.app_context():
        rows = repository.list_tasks(db.connection(), user_id=user_id, limit=10)
    assert len(rows) == 2
    for task in rows:
        assert dump_task(task) == SCHEMA.dump(task)
    assert client.get(tasks_url).get_json() == [SCHEMA.dump(task) for task in rows]

"""The framework's own floor for bench/endpoints.py: plain Flask over the same psycopg pool
and SQL as bench/baseline.py, with no validation, authentication, OpenAPI or logging.

The gap between this and baseline.py is what Flask costs; the gap between tasks_api and
this is what tasks_api adds on top.

    BASELINE_DATABASE_URL=postgresql://... gunicorn --workers 2 bench.flask_baseline:app
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request

from bench.baseline import COLUMNS, CREATE, _json, _pool

app = Flask(__name__)


def _respond(result: Any, status: int = 200) -> Response:
    if result is None:
        return Response(status=404)
    return Response(json.dumps(result, default=_json), status, mimetype="application/json")


@app.get("/api/<user_id>/tasks")
def list_tasks(user_id: str) -> Response:
    with _pool().connection() as conn:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM tasks WHERE user_id = %s"
            " ORDER BY created_at DESC, id DESC LIMIT 21",
            [user_id],
        ).fetchall()
    return _respond(rows[:20])


@app.post("/api/<user_id>/tasks")
def create_task(user_id: str) -> Response:
    body = request.get_json()
    now = datetime.now(UTC)
    with _pool().connection() as conn:
        row = conn.execute(
            CREATE,
            [uuid.uuid4(), user_id, body["title"], body.get("description"), user_id, now, now],
        ).fetchone()
    return _respond(row, 201)


@app.get("/api/<user_id>/tasks/<task_id>")
def get_task(user_id: str, task_id: str) -> Response:
    with _pool().connection() as conn:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM tasks WHERE id = %s AND user_id = %s", [task_id, user_id]
        ).fetchone()
    return _respond(row)


@app.put("/api/<user_id>/tasks/<task_id>")
def update_task(user_id: str, task_id: str) -> Response:
    body = request.get_json()
    with _pool().connection() as conn:
        row = conn.execute(
            "UPDATE tasks SET title = %s, updated_at = now(), version = version + 1"
            f" WHERE id = %s AND user_id = %s RETURNING {COLUMNS}",
            [body["title"], task_id, user_id],
        ).fetchone()
    return _respond(row)


@app.delete("/api/<user_id>/tasks/<task_id>")
def delete_task(user_id: str, task_id: str) -> Response:
    with _pool().connection() as conn:
        deleted = conn.execute(
            "DELETE FROM tasks WHERE id = %s AND user_id = %s", [task_id, user_id]
        ).rowcount
    return Response(status=204 if deleted else 404)


@app.patch("/api/<user_id>/tasks/<task_id>/complete")
def toggle_task(user_id: str, task_id: str) -> Response:
    with _pool().connection() as conn:
        row = conn.execute(
            "UPDATE tasks SET completed = NOT completed,"
            " completed_at = CASE WHEN completed THEN NULL ELSE now() END,"
            " updated_at = now(), version = version + 1 WHERE id = %s AND user_id = %s"
            f" RETURNING {COLUMNS}",
            [task_id, user_id],
        ).fetchone()
    return _respond(row)

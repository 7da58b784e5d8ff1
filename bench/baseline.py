"""The floor for bench/endpoints.py: a bare WSGI app over a psycopg pool, same SQL.

No framework, no validation, no authentication, no OpenAPI: just routing, the statements
tasks_api runs, and json.dumps. Served by gunicorn like the real app:

    BASELINE_DATABASE_URL=postgresql://... gunicorn --workers 2 bench.baseline:app
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

# The task's fields, as tasks_api answers them.
COLUMNS = (
    "id, user_id, title, description, completed, status, priority, due_date, tags,"
    " list_id, parent_id, position, completed_at, created_at, updated_at, version"
)
# A create, in the inbox, last: after the greatest key there (tasks_api/positions.py: ten
# integer digits, then a fraction), read in the same statement, as tasks_api does. Without
# the user's lock, two creates at once may take one key: the floor need not be exact.
# Parameters: id, user_id, title, description, user_id again, created_at, updated_at.
CREATE = (
    f"INSERT INTO tasks ({COLUMNS}, change_position)"
    " VALUES (%s, %s, %s, %s, false, 'todo', 'medium', NULL, '{}', NULL, NULL,"
    " (SELECT lpad((coalesce(left(max(position), 10)::bigint, 4999999999) + 1)::text, 10, '0')"
    "  FROM tasks WHERE user_id = %s AND list_id IS NULL AND parent_id IS NULL),"
    " NULL, %s, %s, 1, 0)"
    f" RETURNING {COLUMNS}"
)
pool: ConnectionPool | None = None


def _pool() -> ConnectionPool:
    global pool
    if pool is None:  # per worker, after the fork
        pool = ConnectionPool(
            os.environ["BASELINE_DATABASE_URL"],
            min_size=1,
            max_size=int(os.environ.get("BASELINE_POOL_SIZE", "4")),
            kwargs={"autocommit": True, "row_factory": dict_row},
        )
    return pool


def _json(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method, parts = environ["REQUEST_METHOD"], environ["PATH_INFO"].strip("/").split("/")
    body = {}
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        body = json.loads(environ["wsgi.input"].read(length))
    status, result = "404 Not Found", None
    with _pool().connection() as conn:
        if parts[:1] == ["api"] and len(parts) == 3 and method == "GET":
            result = conn.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE user_id = %s"
                " ORDER BY created_at DESC, id DESC LIMIT 21",
                [parts[1]],
            ).fetchall()[:20]
            status = "200 OK"
        elif parts[:1] == ["api"] and len(parts) == 3 and method == "POST":
            now = datetime.now(UTC)
            result = conn.execute(
                CREATE,
                [
                    uuid.uuid4(),
                    parts[1],
                    body["title"],
                    body.get("description"),
                    parts[1],
                    now,
                    now,
                ],
            ).fetchone()
            status = "201 Created"
        elif parts[:1] == ["api"] and len(parts) == 4:
            user_id, task_id = parts[1], parts[3]
            if method == "GET":
                result = conn.execute(
                    f"SELECT {COLUMNS} FROM tasks WHERE id = %s AND user_id = %s",
                    [task_id, user_id],
                ).fetchone()
            elif method == "PUT":
                result = conn.execute(
                    "UPDATE tasks SET title = %s, updated_at = now(), version = version + 1"
                    f" WHERE id = %s AND user_id = %s RETURNING {COLUMNS}",
                    [body["title"], task_id, user_id],
                ).fetchone()
            elif method == "DELETE":
                deleted = conn.execute(
                    "DELETE FROM tasks WHERE id = %s AND user_id = %s", [task_id, user_id]
                ).rowcount
                start_response("204 No Content" if deleted else "404 Not Found", [])
                return [b""]
            status = "200 OK" if result else "404 Not Found"
        elif parts[:1] == ["api"] and len(parts) == 5 and method == "PATCH":
            result = conn.execute(
                "UPDATE tasks SET completed = NOT completed,"
                " status = CASE WHEN completed THEN 'todo' ELSE 'done' END,"
                " completed_at = CASE WHEN completed THEN NULL ELSE now() END,"
                f" updated_at = now(), version = version + 1 WHERE id = %s AND user_id = %s"
                f" RETURNING {COLUMNS}",
                [parts[3], parts[1]],
            ).fetchone()
            status = "200 OK" if result else "404 Not Found"
    payload = json.dumps(result, default=_json).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]

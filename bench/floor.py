"""The floor for bench/endpoints.py --efficiency: a bare WSGI function over a psycopg
pool whose database writes the JSON.

GET one answers the text of `row_to_json`, a list the text of `json_agg` over the newest
20 rows, a create `row_to_json` of the row it inserted (in the inbox, last, as
bench/baseline.py's). No framework, no validation, no authentication, no logging: what a
request costs a worker when Python only moves bytes. Served under gunicorn's stock
threaded worker, as issue 22 measured it:

    FLOOR_DATABASE_URL=postgresql://... gunicorn --workers 2 --worker-class gthread \
        --threads 4 bench.floor:app
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import ConnectionPool

from bench.baseline import CREATE

GET = "SELECT row_to_json(t)::text FROM tasks t WHERE t.user_id = %s AND t.id = %s::uuid"
LIST = (
    "SELECT coalesce(json_agg(t)::text, '[]') FROM (SELECT * FROM tasks WHERE user_id = %s"
    " ORDER BY created_at DESC, id DESC LIMIT 20) t"
)
CREATE_JSON = f"WITH t AS ({CREATE}) SELECT row_to_json(t)::text FROM t"
pool: ConnectionPool | None = None


def _pool() -> ConnectionPool:
    global pool
    if pool is None:  # per worker, after the fork
        pool = ConnectionPool(
            os.environ["FLOOR_DATABASE_URL"],
            min_size=4,
            max_size=4,
            kwargs={"autocommit": True},
        )
    return pool


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method, parts = environ["REQUEST_METHOD"], environ["PATH_INFO"].strip("/").split("/")
    status, row = "404 Not Found", None
    with _pool().connection() as conn:
        if len(parts) == 4 and method == "GET":
            row = conn.execute(GET, [parts[1], parts[3]]).fetchone()
            status = "200 OK" if row else status
        elif len(parts) == 3 and method == "GET":
            row = conn.execute(LIST, [parts[1]]).fetchone()
            status = "200 OK"
        elif len(parts) == 3 and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length))
            now = datetime.now(UTC)
            user = parts[1]
            row = conn.execute(
                CREATE_JSON,
                [uuid.uuid4(), user, body["title"], body.get("description"), user, now, now],
            ).fetchone()
            status = "201 Created"
    payload = (row[0] if row else "null").encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]

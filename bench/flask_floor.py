"""The floor's three requests (bench/floor.py: the same statements, the same pool, the
database writing the JSON) served by plain Flask: a route per request, nothing else. No
flask-smorest, marshmallow, SQLAlchemy, authentication or logging, which tasks_api's
contract needs and this does not.

What it costs above the floor is what Flask alone adds to a request: a bound on how
close to the floor any app built on the project's fixed stack can come
(bench/instructions.py counts it).

    FLOOR_DATABASE_URL=postgresql://... gunicorn --workers 2 --worker-class gthread \
        --threads 4 bench.flask_floor:app
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, request

from bench.floor import CREATE_JSON, GET, LIST, _pool

app = Flask(__name__)


def _answer(row: tuple[str] | None, status: int) -> Response:
    if row is None:
        return Response("null", 404, content_type="application/json")
    return Response(row[0], status, content_type="application/json")


@app.get("/api/<user_id>/tasks/<task_id>")
def get_task(user_id: str, task_id: str) -> Response:
    with _pool().connection() as conn:
        return _answer(conn.execute(GET, [user_id, task_id]).fetchone(), 200)


@app.get("/api/<user_id>/tasks")
def list_tasks(user_id: str) -> Response:
    with _pool().connection() as conn:
        return _answer(conn.execute(LIST, [user_id]).fetchone(), 200)


@app.post("/api/<user_id>/tasks")
def create_task(user_id: str) -> Response:
    body = json.loads(request.get_data())
    now = datetime.now(UTC)
    values = [uuid.uuid4(), user_id, body["title"], body.get("description"), user_id, now, now]
    with _pool().connection() as conn:
        return _answer(conn.execute(CREATE_JSON, values).fetchone(), 201)

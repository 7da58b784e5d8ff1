"""HTTP in, one repository call, HTTP out: the task endpoints and the health checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

import flask_smorest
import marshmallow as ma
from flask import Request, Response, current_app, request, url_for
from flask.views import MethodView
from webargs.core import is_json, missing
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from . import auth, db, errors, pages, repository, sync
from .repository import Row
from .schemas import (
    ONE_STATE,
    USER_ID,
    USER_ID_PATTERN,
    USER_ID_RULE,
    ChangesQueryArgsSchema,
    ChangesSchema,
    HealthSchema,
    IdempotencyHeadersSchema,
    TaskCompletionSchema,
    TaskCreateSchema,
    TaskQueryArgsSchema,
    TaskSchema,
    TaskUpdateSchema,
    dump_task,
)

F = TypeVar("F", bound=Callable[..., Any])


class JSONBodyParser(FlaskParser):
    """Reads request bodies the way API.md says.

    An empty body is no body, whatever its Content-Type (front ends send one with
    bodiless requests). Anything else must be a JSON object sent as JSON.
    """

    def load_json(self, req: Any, schema: ma.Schema) -> Any:
        body = _whole_body(req)
        if not body:
            return missing
        if not is_json(req.mimetype):
            raise UnsupportedMediaType("Send the body as application/json.")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest("The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.")
        return data


def _whole_body(req: Request) -> bytes:
    """The whole body, or a 413 when it is longer than MAX_CONTENT_LENGTH.

    werkzeug refuses an announced `Content-Length` over the limit, but a chunked body
    (no length announced) it reads up to the limit and stops there without a word, so
    a longer body would arrive cut short. One more byte from the server's stream tells
    a body that ends at the limit from one that goes on.
    """
    body = req.get_data(cache=True)
    limit = req.max_content_length
    if req.content_length is None and limit is not None and len(body) >= limit:
        if req.input_stream.read(1):
            raise RequestEntityTooLarge()
    return body


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JSONBodyParser()

    def response(self, status_code: int, schema: Any = None, **kwargs: Any) -> Callable[[F], F]:
        # Every response carries X-Request-ID; say so in each operation's docs.
        kwargs["headers"] = {"X-Request-ID": "RequestId", **(kwargs.get("headers") or {})}
        decorator: Callable[[F], F] = super().response(status_code, schema, **kwargs)
        return decorator


def operation(operation_id: str, *statuses: int, headers: Sequence[str] = ()) -> Callable[[F], F]:
    """Name the operation and list the responses it can give besides its success and a 500.

    Operations that can answer 401 require the bearer token (the document's default);
    the others say they need none. `headers` names request header parameters.
    Operations that take a token also list the HTTP server's 414 and 431: a list URL
    (its `q`, its `cursor`) or a header field (the token, `If-Match`) can pass its limits.
    """
    limits = (414, 431) if 401 in statuses else ()
    responses: dict[int, Any] = {
        status: {"$ref": f"#/components/responses/{errors.RESPONSES[status][0]}"}
        for status in sorted((*statuses, *limits, 500))
        if status != 304
    }
    if 304 in statuses:
        responses[304] = {"$ref": "#/components/responses/NotModified"}
    extra: dict[str, Any] = {} if 401 in statuses else {"security": []}
    if headers:
        extra["parameters"] = list(headers)  # apispec turns names into $refs
    decorator: Callable[[F], F] = Blueprint.doc(
        operationId=operation_id, responses=responses, **extra
    )
    return decorator


def register(api: flask_smorest.Api) -> None:
    """Register the blueprints and what their docs need beyond the decorators."""
    api.spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT whose `sub` is the `user_id` in the path. Trying the "
            "service on its embedded database? Print one for user alice with "
            "`make token USER=alice` (or `flask --app wsgi token alice`) in the project "
            "folder and paste it here.",
        },
    )
    for name, header, description in (
        ("IfMatch", "If-Match", "Write only if the task is at this version (its ETag); else 412."),
        ("IfNoneMatch", "If-None-Match", "Answer 304 if the task is still at this version."),
    ):
        api.spec.components.parameter(
            name,
            "header",
            {"name": header, "description": description, "schema": {"type": "string"}},
        )
    api.spec.components.response(
        "NotModified",
        {
            "description": "The task is still at the version named in If-None-Match.",
            "headers": {"ETag": ETAG_HEADER["ETag"], "X-Request-ID": "RequestId"},
        },
    )
    # marshmallow cannot say "at least one field", nor how status and completed agree;
    # JSON Schema can.
    api.spec.components.schema("TaskCreate", ONE_STATE, schema=TaskCreateSchema)
    api.spec.components.schema(
        "TaskUpdate", {"minProperties": 1, **ONE_STATE}, schema=TaskUpdateSchema
    )
    api.register_blueprint(tasks, parameters=[_USER_ID_PARAMETER])
    api.register_blueprint(health)


tasks = Blueprint(
    "tasks",
    __name__,
    url_prefix="/api/<user_id>/tasks",
    description="A user's to-do tasks.",
)

_USER_ID_PARAMETER = {
    "in": "path",
    "name": "user_id",
    "required": True,
    "description": "The owner's id, as the auth provider issues it.",
    "schema": {"type": "string", "pattern": USER_ID_PATTERN, "minLength": 1, "maxLength": 128},
}


@tasks.before_request
def _authorize() -> None:
    """The one gate for every /api route: the token's subject must be the path's user."""
    if request.method == "OPTIONS":  # CORS preflights carry no token
        return
    assert request.view_args is not None
    user_id = request.view_args["user_id"]
    auth.authorize(user_id)
    if not USER_ID.fullmatch(user_id):
        errors.validation_failed({"user_id": [USER_ID_RULE]})


ETAG_HEADER = {
    "ETag": {
        "description": "The task's version as a strong ETag; send it back in `If-Match` "
        "to write only if the task has not changed.",
        "required": True,
        "schema": {"type": "string", "example": '"3"'},
    }
}
_VERSION_TAG = re.compile(r"[0-9]{1,9}")


def _found(task: Row | None) -> Row:
    if task is None:
        errors.task_not_found()
    return task


def _task_headers(task: Row, *, created: bool = False) -> dict[str, str]:
    headers = {"ETag": f'"{task["version"]}"'}
    if created:
        headers["Location"] = url_for(".TaskById", user_id=task["user_id"], task_id=task["id"])
    return headers


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response, encoded here: views return these, so flask-smorest passes them
    through instead of dumping with the schema it documents (see `dump_task`)."""
    return current_app.response_class(
        current_app.json.dumps(body), status, headers, mimetype="application/json"
    )


def _task_response(task: Row, status: int = 200, *, created: bool = False) -> Response:
    return _json(dump_task(task), status, _task_headers(task, created=created))


def _if_match() -> frozenset[int] | None:
    """The versions `If-Match` accepts; None when it sets no version (absent, or `*`).

    Strong comparison: weak or foreign tags match no version, so the write is a 412.
    """
    if not _sent_if_match() or request.if_match.star_tag:
        return None
    tags = request.if_match.as_set()
    return frozenset(int(tag) for tag in tags if tag and _VERSION_TAG.fullmatch(tag))


def _sent_if_match() -> bool:
    return bool(request.headers.get("If-Match", "").strip())


def _written(task: Row | None, user_id: str, task_id: UUID) -> Response:
    """The response to a write; when it matched nothing, tell 404 from 412."""
    if task is not None:
        return _task_response(task)
    if _sent_if_match():
        # Only on this failure path: a second query, to say why.
        version = repository.task_version(db.connection(), user_id=user_id, task_id=task_id)
        if version is not None:
            errors.precondition_failed(f'"{version}"')
    errors.task_not_found()


def _filters(args: Mapping[str, Any]) -> repository.Filters:
    """The list's filters; `completed` and `status` narrow the same state."""
    statuses: set[str] | None = None
    if "status" in args:
        statuses = set(args["status"])
    if "completed" in args:
        done = {"done"} if args["completed"] else {"todo", "in_progress"}
        statuses = done if statuses is None else statuses & done
    priorities = args.get("priority")
    return repository.Filters(
        statuses=statuses,
        priorities=None if priorities is None else set(priorities),
        tags=args.get("tag", ()),
        due_after=args.get("due_after"),
        due_before=args.get("due_before"),
        q=args.get("q"),
    )


def _fingerprint(fields: Mapping[str, Any]) -> str:
    encoded = json.dumps(fields, sort_keys=True, default=str)  # due_date is a date
    return hashlib.sha256(encoded.encode()).hexdigest()


def _create_once(task: dict[str, Any], key: str, fingerprint: str) -> Response:
    """Create `task` under an Idempotency-Key: at most two database round trips."""
    conn, user_id = db.connection(), task["user_id"]
    if repository.claim_key(conn, user_id=user_id, key=key, request_hash=fingerprint):
        # The bytes a create without a key would send, kept for the replays.
        response = _task_response(task, 201, created=True)
        try:
            repository.create_task_for_key(
                conn, task, key=key, status=201, response=response.get_data(as_text=True)
            )
        except Exception:
            with contextlib.suppress(Exception):
                repository.release_key(conn, user_id=user_id, key=key)
            raise
        return response
    record = repository.key_record(conn, user_id=user_id, key=key)
    if record is None or record["status"] is None:
        errors.conflict(
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            retry_after=1,
        )
    if record["request_hash"] != fingerprint:
        errors.validation_failed(
            {"Idempotency-Key": ["Already used with another body; use a new key for a new task."]}
        )
    replay = {"id": record["task_id"], "user_id": user_id, "version": 1}
    return current_app.response_class(
        record["response"],
        status=record["status"],
        mimetype="application/json",
        headers={**_task_headers(replay, created=True), "Idempotent-Replayed": "true"},
    )


@tasks.route("")
class Tasks(MethodView):
    init_every_request = False

    @operation("listTasks", 401, 403, 422, 503)
    @tasks.arguments(TaskQueryArgsSchema(), location="query")
    @tasks.response(
        200,
        TaskSchema(many=True),
        description="One page of the user's tasks.",
        headers={
            "Link": {
                "description": 'The next page: `<URL>; rel="next"` (RFC 8288). '
                "Absent on the last page.",
                "schema": {"type": "string"},
            }
        },
    )
    def get(self, args: dict[str, Any], user_id: str) -> Response:
        """List a user's tasks

        Newest first unless `sort` says otherwise, one page at a time: follow the
        `Link` header's `next` URL until there is none.
        """
        limit, after = args["limit"], pages.start_after(user_id, args)
        filters = _filters(args)
        rows = db.read(
            lambda conn: repository.list_tasks(
                conn,
                user_id=user_id,
                sort=args["sort"],
                filters=filters,
                limit=limit + 1,  # one more tells whether a next page exists
                after=after,
            )
        )
        page = rows[:limit]
        headers = {"Link": pages.next_link(user_id, args, page)} if len(rows) > limit else {}
        return _json([dump_task(task) for task in page], headers=headers)

    @operation("createTask", 400, 401, 403, 409, 413, 415, 422, 503)
    @tasks.arguments(IdempotencyHeadersSchema(), location="headers")
    @tasks.arguments(TaskCreateSchema())
    @tasks.response(
        201,
        TaskSchema,
        description="The created task (or, for a repeated Idempotency-Key, the first response).",
        headers={
            "Location": {
                "description": "The new task's URL.",
                "required": True,
                "schema": {"type": "string"},
            },
            **ETAG_HEADER,
            "Idempotent-Replayed": {
                "description": "`true` when this repeats the response to an earlier request "
                "with the same Idempotency-Key.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
    )
    def post(self, headers: dict[str, Any], fields: dict[str, Any], user_id: str) -> Response:
        """Create a task

        With an `Idempotency-Key`, a repeat of the request within 24 hours returns the
        first response and creates nothing; the same key with another body is a 422, and
        a repeat while the first is still running is a 409.
        """
        task = repository.new_task(user_id=user_id, **fields)
        key = headers.get("idempotency_key")
        if key is None:
            created = repository.create_task(db.connection(), task)
            return _task_response(created, 201, created=True)
        return _create_once(task, key, _fingerprint(fields))


@tasks.route("/changes")
class TaskChanges(MethodView):
    init_every_request = False

    @operation("listTaskChanges", 401, 403, 410, 422, 503)
    @tasks.arguments(ChangesQueryArgsSchema(), location="query")
    @tasks.response(200, ChangesSchema, description="What changed after the token.")
    def get(self, args: dict[str, Any], user_id: str) -> Response:
        """List what changed since the last sync

        Without `since`, every task, page by page; with it, every task created or
        changed after that point, in its current state, and the ids of the tasks
        deleted since. Apply the answer (put each task by `id`, remove each deleted id),
        keep `next`, and call again with it, at once while `more` is true. A token
        older than 30 days is a 410: start again without `since`.
        """
        token, limit = args.get("since"), args["limit"]
        since = sync.first() if token is None else sync.read(user_id, token)
        read_at = int(time.time())  # before the read: a later delete is after it
        page = db.read(
            lambda conn: repository.changes(
                conn,
                user_id=user_id,
                after=since.position,
                deleted_after=since.deleted_after,
                limit=limit + 1,  # one more tells whether more wait
            )
        )
        entries = sorted((*page.changed, *page.deleted), key=lambda row: row["position"])
        more = len(entries) > limit
        kept = repository.ChangesPage(
            changed=[row for row in entries[:limit] if not row["deleted"]],
            deleted=[row for row in entries[:limit] if row["deleted"]],
            horizon=page.horizon,
        )
        following = sync.following(since, kept, more=more, read_at=read_at)
        body = {
            "changes": [dump_task(task) for task in kept.changed],
            "deleted": [str(row["id"]) for row in kept.deleted],
            "next": sync.issue(user_id, following),
            "more": more,
        }
        return _json(body)


_TASK_ID_PARAMETER = {
    "in": "path",
    "name": "task_id",
    "required": True,
    "description": "The task's id. A malformed one is a 404, like a missing one.",
    "schema": {"type": "string", "format": "uuid"},
}


@tasks.route("/<uuid:task_id>", parameters=[_TASK_ID_PARAMETER])
class TaskById(MethodView):
    init_every_request = False

    @operation("getTask", 304, 401, 403, 404, 422, 503, headers=("IfNoneMatch",))
    @tasks.response(200, TaskSchema, description="The task.", headers=ETAG_HEADER)
    def get(self, user_id: str, task_id: UUID) -> Response:
        """Get a task

        With `If-None-Match` naming the current version, answers 304 with no body.
        """
        task = _found(
            db.read(lambda conn: repository.get_task(conn, user_id=user_id, task_id=task_id))
        )
        if request.if_none_match.contains_weak(str(task["version"])):
            return Response(status=304, headers=_task_headers(task))
        return _task_response(task)

    @operation("updateTask", 400, 401, 403, 404, 412, 413, 415, 422, 503, headers=("IfMatch",))
    @tasks.arguments(TaskUpdateSchema())
    @tasks.response(200, TaskSchema, description="The task as updated.", headers=ETAG_HEADER)
    def put(self, changes: dict[str, Any], user_id: str, task_id: UUID) -> Response:
        """Update a task's fields

        Only the fields present in the body change; send at least one. With `If-Match`,
        only if the task is still at that version (else 412, nothing changed).
        """
        versions = _if_match()
        task = repository.update_task(
            db.connection(), user_id=user_id, task_id=task_id, changes=changes, versions=versions
        )
        return _written(task, user_id, task_id)

    @operation("deleteTask", 401, 403, 404, 412, 422, 503, headers=("IfMatch",))
    @tasks.response(204, description="Deleted.")
    def delete(self, user_id: str, task_id: UUID) -> tuple[str, int]:
        """Delete a task

        With `If-Match`, only if the task is still at that version (else 412).
        """
        conn = db.connection()
        if not repository.delete_task(conn, user_id=user_id, task_id=task_id, versions=_if_match()):
            _written(None, user_id, task_id)
        return "", 204


@tasks.route("/<uuid:task_id>/complete", parameters=[_TASK_ID_PARAMETER])
class TaskCompletion(MethodView):
    init_every_request = False

    @operation(
        "toggleTaskCompletion", 400, 401, 403, 404, 412, 413, 415, 422, 503, headers=("IfMatch",)
    )
    @tasks.arguments(TaskCompletionSchema(), required=False)
    @tasks.response(200, TaskSchema, description="The task as updated.", headers=ETAG_HEADER)
    def patch(self, body: dict[str, Any], user_id: str, task_id: UUID) -> Response:
        """Toggle a task's completion, or set it

        With no body (or `{}`), flips `completed`. With `{"completed": true|false}`,
        sets it; setting the value it already has changes nothing. With `If-Match`, only
        if the task is still at that version (else 412).
        """
        task = repository.set_completed(
            db.connection(),
            user_id=user_id,
            task_id=task_id,
            completed=body.get("completed"),
            versions=_if_match(),
        )
        return _written(task, user_id, task_id)


health = Blueprint("health", __name__, url_prefix="/health", description="Probes for the platform.")


@health.route("")
class Liveness(MethodView):
    init_every_request = False

    @operation("getHealth")
    @health.response(200, HealthSchema, description="The process is up.")
    def get(self) -> dict[str, str]:
        """Report that the process is up

        Never touches the database, so a sleeping database does not fail it.
        """
        return {"status": "ok"}


@health.route("/ready")
class Readiness(MethodView):
    init_every_request = False

    @operation("getReadiness", 503)
    @health.response(200, HealthSchema, description="The database answers, migrated.")
    def get(self) -> dict[str, str]:
        """Report whether the database answers and its schema fits this version

        A 503 names what is wrong: the database cannot be reached, or its migrations
        have not run (the detail says which command runs them).
        """
        db.read(db.check_schema)
        return {"status": "ok"}

"""HTTP in, one repository call, HTTP out: the task endpoints and the health checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import flask_smorest
import marshmallow as ma
from flask import request, url_for
from flask.views import MethodView
from sqlalchemy.engine import RowMapping
from webargs.core import is_json, missing
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from . import auth, db, errors, pages, repository
from .schemas import (
    USER_ID,
    USER_ID_PATTERN,
    USER_ID_RULE,
    HealthSchema,
    TaskCompletionSchema,
    TaskCreateSchema,
    TaskQueryArgsSchema,
    TaskSchema,
    TaskUpdateSchema,
)

F = TypeVar("F", bound=Callable[..., Any])


class JSONBodyParser(FlaskParser):
    """Reads request bodies the way API.md says.

    An empty body is no body, whatever its Content-Type (front ends send one with
    bodiless requests). Anything else must be a JSON object sent as JSON.
    """

    def load_json(self, req: Any, schema: ma.Schema) -> Any:
        body = req.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH
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


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JSONBodyParser()

    def response(self, status_code: int, schema: Any = None, **kwargs: Any) -> Callable[[F], F]:
        # Every response carries X-Request-ID; say so in each operation's docs.
        kwargs["headers"] = {"X-Request-ID": "RequestId", **(kwargs.get("headers") or {})}
        decorator: Callable[[F], F] = super().response(status_code, schema, **kwargs)
        return decorator


def operation(operation_id: str, *error_statuses: int) -> Callable[[F], F]:
    """Name the operation and list the problem responses it can give besides a 500.

    Operations that can answer 401 require the bearer token (the document's default);
    the others say they need none.
    """
    responses = {
        status: {"$ref": f"#/components/responses/{errors.RESPONSES[status][0]}"}
        for status in (*error_statuses, 500)
    }
    extra: dict[str, Any] = {} if 401 in error_statuses else {"security": []}
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
            "description": "A JWT whose `sub` is the `user_id` in the path.",
        },
    )
    # marshmallow cannot say "at least one field"; JSON Schema can.
    api.spec.components.schema("TaskUpdate", {"minProperties": 1}, schema=TaskUpdateSchema)
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


def _found(task: RowMapping | None) -> RowMapping:
    if task is None:
        errors.task_not_found()
    return task


@tasks.route("")
class Tasks(MethodView):
    init_every_request = False

    @operation("listTasks", 401, 403, 422, 503)
    @tasks.arguments(TaskQueryArgsSchema, location="query")
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
    def get(
        self, args: dict[str, Any], user_id: str
    ) -> tuple[Sequence[RowMapping], dict[str, str]]:
        """List a user's tasks

        Newest first unless `sort` says otherwise, one page at a time: follow the
        `Link` header's `next` URL until there is none.
        """
        limit = args["limit"]
        rows = repository.list_tasks(
            db.connection(),
            user_id=user_id,
            sort=args["sort"],
            completed=args.get("completed"),
            q=args.get("q"),
            limit=limit + 1,  # one more tells whether a next page exists
            after=pages.start_after(user_id, args),
        )
        page = rows[:limit]
        headers = {"Link": pages.next_link(user_id, args, page)} if len(rows) > limit else {}
        return page, headers

    @operation("createTask", 400, 401, 403, 413, 415, 422, 503)
    @tasks.arguments(TaskCreateSchema)
    @tasks.response(
        201,
        TaskSchema,
        description="The created task.",
        headers={
            "Location": {
                "description": "The new task's URL.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    )
    def post(self, fields: dict[str, Any], user_id: str) -> tuple[RowMapping, dict[str, str]]:
        """Create a task"""
        task = repository.create_task(db.connection(), user_id=user_id, **fields)
        location = url_for(".TaskById", user_id=user_id, task_id=task["id"])
        return task, {"Location": location}


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

    @operation("getTask", 401, 403, 404, 422, 503)
    @tasks.response(200, TaskSchema, description="The task.")
    def get(self, user_id: str, task_id: UUID) -> RowMapping:
        """Get a task"""
        return _found(repository.get_task(db.connection(), user_id=user_id, task_id=task_id))

    @operation("updateTask", 400, 401, 403, 404, 413, 415, 422, 503)
    @tasks.arguments(TaskUpdateSchema)
    @tasks.response(200, TaskSchema, description="The task as updated.")
    def put(self, changes: dict[str, Any], user_id: str, task_id: UUID) -> RowMapping:
        """Update a task's fields

        Only the fields present in the body change; send at least one.
        """
        return _found(
            repository.update_task(
                db.connection(), user_id=user_id, task_id=task_id, changes=changes
            )
        )

    @operation("deleteTask", 401, 403, 404, 422, 503)
    @tasks.response(204, description="Deleted.")
    def delete(self, user_id: str, task_id: UUID) -> tuple[str, int]:
        """Delete a task"""
        if not repository.delete_task(db.connection(), user_id=user_id, task_id=task_id):
            errors.task_not_found()
        return "", 204


@tasks.route("/<uuid:task_id>/complete", parameters=[_TASK_ID_PARAMETER])
class TaskCompletion(MethodView):
    init_every_request = False

    @operation("toggleTaskCompletion", 400, 401, 403, 404, 413, 415, 422, 503)
    @tasks.arguments(TaskCompletionSchema, required=False)
    @tasks.response(200, TaskSchema, description="The task as updated.")
    def patch(self, body: dict[str, Any], user_id: str, task_id: UUID) -> RowMapping:
        """Toggle a task's completion, or set it

        With no body (or `{}`), flips `completed`. With `{"completed": true|false}`,
        sets it; setting the value it already has changes nothing.
        """
        return _found(
            repository.set_completed(
                db.connection(),
                user_id=user_id,
                task_id=task_id,
                completed=body.get("completed"),
            )
        )


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
    @health.response(200, HealthSchema, description="The database answers.")
    def get(self) -> dict[str, str]:
        """Report whether the database answers"""
        db.ping()
        return {"status": "ok"}

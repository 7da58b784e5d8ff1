"""The blueprints, one module per resource: tasks (and their sync feed), lists, health."""

from __future__ import annotations

import flask_smorest

from ..schemas.lists import ListUpdateSchema
from ..schemas.tasks import ONE_STATE, TaskCreateSchema, TaskUpdateSchema
from . import changes  # noqa: F401  (the sync feed's route, on the tasks blueprint)
from .base import ETAG_HEADER, MAX_IF_MATCH_TAGS, USER_ID_PARAMETER
from .health import health
from .lists import lists
from .tasks import tasks


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
        (
            "IfMatch",
            "If-Match",
            "Write only if it is at this version (its ETag); else 412. At most "
            f"{MAX_IF_MATCH_TAGS} entity tags (else 422).",
        ),
        ("IfNoneMatch", "If-None-Match", "Answer 304 if it is still at this version."),
    ):
        api.spec.components.parameter(
            name,
            "header",
            {"name": header, "description": description, "schema": {"type": "string"}},
        )
    api.spec.components.response(
        "NotModified",
        {
            "description": "Still at the version named in If-None-Match.",
            "headers": {"ETag": ETAG_HEADER["ETag"], "X-Request-ID": "RequestId"},
        },
    )
    # marshmallow cannot say "at least one field", nor how status and completed agree;
    # JSON Schema can.
    api.spec.components.schema("TaskCreate", ONE_STATE, schema=TaskCreateSchema)
    api.spec.components.schema(
        "TaskUpdate", {"minProperties": 1, **ONE_STATE}, schema=TaskUpdateSchema
    )
    api.spec.components.schema("ListUpdate", {"minProperties": 1}, schema=ListUpdateSchema)
    api.register_blueprint(tasks, parameters=[USER_ID_PARAMETER])
    api.register_blueprint(lists, parameters=[USER_ID_PARAMETER])
    api.register_blueprint(health)

"""Every error the API answers, as RFC 9457 problem details, produced here and only here."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any, NoReturn

from flask import Flask, Response, current_app
from flask_smorest import Api
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import (
    Conflict,
    Forbidden,
    Gone,
    HTTPException,
    NotFound,
    PreconditionFailed,
    RequestEntityTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableEntity,
)

from . import db
from .context import current_application
from .logs import request_id
from .schemas.fields import ProblemSchema

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
# A schema behind the code waits for someone to run the migrations: no point in hurrying.
SCHEMA_RETRY_AFTER_SECONDS = "30"
# RFC 9110's names where Python's HTTPStatus still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def init_app(app: Flask) -> None:
    # Registered after flask-smorest's Api, so these replace its JSON error handler.
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(DBAPIError, _database_error)
    app.register_error_handler(PoolTimeoutError, _database_unavailable)
    app.register_error_handler(db.SchemaBehind, _schema_behind)
    app.register_error_handler(Exception, _unexpected)
    app.extensions["tasks_api.outages"] = _Burst(quiet_seconds=10.0)


def unauthorized(detail: str, *, token_sent: bool) -> NoReturn:
    # RFC 6750 3.1: say which scheme to use, and that a token sent was refused.
    challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"
    exc = Unauthorized(detail)
    exc.data = {"headers": {"WWW-Authenticate": challenge}}  # type: ignore[attr-defined]
    raise exc


def forbidden(detail: str) -> NoReturn:
    raise Forbidden(detail)


def service_unavailable(detail: str, *, retry_after: int) -> NoReturn:
    raise ServiceUnavailable(detail, retry_after=retry_after)


def nothing_changed(failing: Mapping[str, list[str]]) -> NoReturn:
    """409 for an all-or-nothing bulk request that one task or more would have failed."""
    exc = Conflict(
        f"Nothing changed: {len(failing)} of the tasks cannot take this action; see `errors`."
    )
    exc.data = {"errors": dict(failing)}  # type: ignore[attr-defined]
    raise exc


def conflict(detail: str, *, retry_after: int) -> NoReturn:
    exc = Conflict(detail)
    exc.data = {"headers": {"Retry-After": str(retry_after)}}  # type: ignore[attr-defined]
    raise exc


def precondition_failed(resource: str, current_etag: str) -> NoReturn:
    exc = PreconditionFailed(
        f"The {resource} has changed since the If-Match version; read it again and retry."
    )
    exc.data = {"headers": {"ETag": current_etag}}  # type: ignore[attr-defined]
    raise exc


def gone(detail: str) -> NoReturn:
    raise Gone(detail)


def not_found(resource: str) -> NoReturn:
    raise NotFound(f"No {resource} with this id belongs to this user.")


# Why a write about a task's or list's place, or a create, did not happen, by the
# verdict its plan gave (tasks_api/repository): the field to name and what to say.
_PLACE_PROBLEMS = {
    "list_missing": ("list_id", "No list with this id belongs to this user."),
    "parent_missing": ("parent_id", "No task with this id belongs to this user."),
    "parent_self": ("parent_id", "A task cannot be its own parent."),
    "parent_nested": (
        "parent_id",
        "That task is a subtask, and subtasks have none of their own: choose a top-level task.",
    ),
    "has_subtasks": ("parent_id", "This task has subtasks, so it cannot become one."),
    "list_mismatch": (
        "list_id",
        "A subtask is in its parent's list: leave list_id out, or send the parent's.",
    ),
}
_LIMITS = {
    "task_limit": "This user has 100,000 tasks, the most one user may have; delete some first.",
    "list_limit": "This user has 1,000 lists, the most one user may have; delete some first.",
    "subtask_limit": "That task has 200 subtasks, the most one task may have.",
}


def outcome(verdict: str) -> tuple[int, dict[str, list[str]]]:
    """What one task's result in a bulk request says when its verdict is not ok: the
    status its own route would have answered, and `errors` for a 409 or 422."""
    if verdict == "not_found":
        return 404, {"id": ["No task with this id belongs to this user."]}
    if verdict == "stale":
        return 412, {"if_match": ["The task has changed since this version; read it again."]}
    if verdict == "subtask_limit":
        return 409, {"parent_id": [_LIMITS[verdict]]}
    if verdict == "crowded":
        return 409, {
            "position": ["This place has taken every position it can; move tasks one at a time."]
        }
    field, message = _PLACE_PROBLEMS[verdict]
    return 422, {field: [message]}


def refused(verdict: str, resource: str) -> NoReturn:
    """422 for a place that does not exist or breaks the subtask rules, 409 past a
    limit (naming it, and without Retry-After: retrying will not help)."""
    if verdict in _LIMITS:
        raise Conflict(_LIMITS[verdict])
    if verdict in ("after_invalid", "before_invalid"):
        field = verdict.removesuffix("_invalid")
        where = (
            "the task's siblings at its destination"
            if resource == "task"
            else "the user's other lists"
        )
        validation_failed({field: [f"Not one of {where}."]})
    field, message = _PLACE_PROBLEMS[verdict]
    validation_failed({field: [message]})


def validation_failed(errors: Mapping[str, list[str]]) -> NoReturn:
    exc = UnprocessableEntity(validation_detail(errors))
    exc.data = {"errors": dict(errors)}  # type: ignore[attr-defined]
    raise exc


def validation_detail(errors: Mapping[str, Any]) -> str:
    """The first problem in words, and how many more: front ends show `detail` as is.

    `title: Shorter than minimum length 1. (and 2 more problems; see `errors`)`
    """
    problems = list(_problems(errors, ""))
    if not problems:
        return "The request is not valid; see `errors`."
    where, message = problems[0]
    detail = f"{where}: {message}" if where else message
    if len(problems) > 1:
        more = len(problems) - 1
        detail += f" (and {more} more problem{'s' if more > 1 else ''}; see `errors`)"
    return detail


def _problems(messages: Any, where: str) -> Iterator[tuple[str, str]]:
    """(field, message) for each message, nested fields dotted: `tags.0`."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            yield from _problems(value, f"{where}.{key}" if where else str(key))
    elif isinstance(messages, list | tuple):
        for message in messages:
            yield from _problems(message, where)
    else:
        yield where, str(messages)


def problem(
    status: int,
    detail: str,
    *,
    errors: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    **members: str,
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status) or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **members,
    }
    if errors:
        body["errors"] = errors
    app = current_application()
    response = app.response_class(app.json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


def _http_error(exc: HTTPException) -> Response | HTTPException:
    if exc.code is None or exc.code < 400:  # routing redirects are not errors
        return exc
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    data: Mapping[str, Any] = getattr(exc, "data", None) or {}
    headers.update(data.get("headers") or {})
    errors = data.get("errors")
    if errors is None and "messages" in data:  # raised by webargs while parsing
        errors = _flatten(data["messages"])
        detail = validation_detail(errors)
    elif isinstance(exc, RequestEntityTooLarge):
        detail = f"The body is larger than {current_app.config['MAX_CONTENT_LENGTH'] // 1024} KiB."
    else:
        detail = exc.description or HTTPStatus(exc.code).description
    members = {"request_id": request_id()} if exc.code >= 500 else {}
    return problem(exc.code, detail, errors=errors, headers=headers, **members)


# Each problem response, by status: its component name in the OpenAPI document and
# what it means for the operations that list it.
RESPONSES = {
    400: ("BadRequest", "The body is not valid JSON, or not a JSON object."),
    401: ("Unauthorized", "No bearer token, or one that is expired, badly signed or malformed."),
    403: ("Forbidden", "The bearer token is valid but for another user."),
    404: ("NotFound", "No such task or list for this user (or a malformed id)."),
    409: (
        "Conflict",
        "A limit would be passed (100,000 tasks or 1,000 lists per user, 200 subtasks per "
        "task; the detail says which), or a request with this Idempotency-Key is still in "
        "flight (then with `Retry-After`).",
    ),
    410: ("Gone", "The sync token is older than 30 days: sync again without `since`."),
    412: ("PreconditionFailed", "If-Match names a version the task or list no longer has."),
    413: ("PayloadTooLarge", "The body is larger than 64 KiB."),
    414: (
        "URITooLong",
        "The request line is longer than 8 KiB (a list URL with a long `q` or `cursor`, "
        "say); shorten it. Answered by the HTTP server before the app sees the request.",
    ),
    415: ("UnsupportedMediaType", "A body was sent that is not `application/json`."),
    422: (
        "ValidationFailed",
        "A field or parameter is not valid, or a query parameter is one the operation "
        "does not define or is repeated where it takes one value; see `errors`.",
    ),
    431: (
        "RequestHeaderFieldsTooLarge",
        "A header field is longer than 8 KiB, there are more than 100 of them, or the "
        "whole head (request line and fields) passes 64 KiB. Answered by the HTTP server "
        "before the app sees the request.",
    ),
    500: ("InternalServerError", "An unexpected failure; quote `request_id` when reporting it."),
    503: (
        "ServiceUnavailable",
        "The database, or the token's key server, cannot be reached, or the database's "
        "migrations have not run (the detail says which); retry after `Retry-After`.",
    ),
}


def document(api: Api) -> None:
    """Put the problem responses in the OpenAPI components, for operations to refer to."""
    api.spec.components.header(
        "RequestId",
        {
            "description": "The request's id: the one sent in `X-Request-ID`, or a new one.",
            "required": True,
            "schema": {"type": "string"},
        },
    )
    retry_after = {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "example": RETRY_AFTER_SECONDS},
    }
    for status, (name, description) in RESPONSES.items():
        headers: dict[str, Any] = {"X-Request-ID": "RequestId"}
        if status in (409, 503):
            headers["Retry-After"] = retry_after
        if status == 401:
            headers["WWW-Authenticate"] = {
                "description": 'The scheme to use: `Bearer`, with `error="invalid_token"` '
                "when the token sent was refused.",
                "required": True,
                "schema": {"type": "string", "example": 'Bearer error="invalid_token"'},
            }
        api.spec.components.response(
            name,
            {
                "description": description,
                "content": {PROBLEM_JSON: {"schema": ProblemSchema}},
                "headers": headers,
            },
        )


def _flatten(messages: Mapping[str, Any]) -> dict[str, Any]:
    """webargs nests messages by location; clients want them by field.

    `{"json": {"title": [...], "_schema": [...]}}` becomes
    `{"title": [...], "json": [...]}`: whole-location messages keep the location's name;
    a nested object's fields are dotted (`{"to": {"list_id": [...]}}`: `to.list_id`).
    """
    flat: dict[str, Any] = {}
    for location, fields in messages.items():
        if not isinstance(fields, Mapping):
            flat[location] = fields
            continue
        for field, field_messages in fields.items():
            _put(flat, location if field == "_schema" else field, field_messages)
    return flat


def _put(flat: dict[str, Any], name: str, messages: Any) -> None:
    """A nested object's messages under dotted names: `to.list_id`, `set.title`."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            _put(flat, name if key == "_schema" else f"{name}.{key}", value)
    else:
        found = messages if isinstance(messages, list) else [str(messages)]
        flat.setdefault(name, []).extend(found)


class _Burst:
    """Lets one log line through per burst of the same failure.

    A database outage fails every request; one line with the driver's reason says as
    much as thousands, and the next line counts those left out.
    """

    def __init__(self, quiet_seconds: float) -> None:
        self.quiet_seconds = quiet_seconds
        self._last = -math.inf
        self._left_out = 0
        self._lock = threading.Lock()

    def admit(self) -> int | None:
        """None to stay quiet; else how many were left out since the last line."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.quiet_seconds:
                self._left_out += 1
                return None
            left_out, self._left_out, self._last = self._left_out, 0, now
            return left_out


def _outages() -> _Burst:
    burst: _Burst = current_app.extensions["tasks_api.outages"]
    return burst


def _database_error(exc: DBAPIError) -> Response:
    if db.missing_schema(exc):
        # Asked only on this failure path: is the schema behind this code?
        try:
            db.read(db.check_schema)
        except db.SchemaBehind as behind:
            return _schema_behind(behind)
        except DBAPIError:
            pass
        return _unexpected(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        return _database_unavailable(exc)
    return _unexpected(exc)


def _database_unavailable(exc: Exception) -> Response:
    left_out = _outages().admit()
    if left_out is not None:
        # The driver's own words (libpq's carry no password; statements and values are
        # left out): they say whether TLS, the role or the database is the problem.
        log.warning(
            "database unavailable: %s (request_id=%s%s)",
            db.driver_message(exc),
            request_id(),
            f"; {left_out} more since the last such line" if left_out else "",
        )
    return problem(
        503,
        "The database cannot be reached right now; retry shortly.",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
        request_id=request_id(),
    )


def _schema_behind(exc: db.SchemaBehind) -> Response:
    if _outages().admit() is not None:
        log.error("%s", exc)
    return problem(
        503,
        str(exc),
        headers={"Retry-After": SCHEMA_RETRY_AFTER_SECONDS},
        request_id=request_id(),
    )


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error (request_id=%s)", request_id())
    return problem(
        500,
        "An unexpected error occurred. Quote the request id when reporting it.",
        request_id=request_id(),
    )

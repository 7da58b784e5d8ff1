"""What every route shares: reading bodies, the blueprint class and the operation docs,
authorization, JSON responses, ETags and If-Match, and a write's outcome as HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import flask_smorest
import marshmallow as ma
from flask import Request, Response, current_app, url_for
from sqlalchemy import Connection
from webargs.core import is_json, missing
from webargs.flaskparser import FlaskParser
from webargs.multidictproxy import MultiDictProxy
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from .. import auth, db, errors
from ..context import current_application, current_request
from ..repository import keys
from ..repository.writes import OK, Outcome, Row
from ..schemas.fields import USER_ID, USER_ID_PATTERN, USER_ID_RULE

F = TypeVar("F", bound=Callable[..., Any])


class JSONBodyParser(FlaskParser):
    """Reads request bodies the way API.md says.

    An empty body is no body, whatever its Content-Type (front ends send one with
    bodiless requests). Anything else must be a JSON object sent as JSON.
    """

    def __init__(self) -> None:
        super().__init__()
        self._defaults: dict[tuple[ma.Schema, str], Any] = {}

    def parse(
        self, argmap: Any, req: Any = None, *, location: str | None = None, **kwargs: Any
    ) -> Any:
        """webargs' parse; but a query string, or headers, with nothing in them for the
        schema load as what the schema gives for nothing, which is the same each time:
        kept from the first such request (a list's unfiltered first page; a create
        without an Idempotency-Key, whose header schema cost it ~5% in-process)."""
        if location not in ("query", "headers") or not isinstance(argmap, ma.Schema):
            return super().parse(argmap, req, location=location, **kwargs)
        sent = req or self.get_default_request()
        if location == "query":
            empty = not sent.query_string
        else:
            empty = not any(name in sent.headers for name in _names(argmap))
        if not empty or kwargs.get("validate"):
            return super().parse(argmap, req, location=location, **kwargs)
        key = (argmap, location)
        if key not in self._defaults:
            self._defaults[key] = super().parse(argmap, req, location=location, **kwargs)
        return dict(self._defaults[key])

    def get_default_request(self) -> Request:
        # The request itself, not Flask's proxy, which webargs passes to each loader
        # (tasks_api/context.py).
        return current_request()

    def load_querystring(self, req: Any, schema: ma.Schema) -> Any:
        return _QueryArgs(req.args, schema)

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


class _QueryArgs(MultiDictProxy):
    """webargs' view of a query string, without an exception for each parameter not
    sent: marshmallow asks for every field of the schema (a list's has 12), and
    werkzeug's `MultiDict.get` raises and catches a `BadRequestKeyError`, an
    HTTPException, for each one absent. A list's query schema loaded in 57 us, now 34."""

    def __init__(self, args: Any, schema: ma.Schema) -> None:
        self.data = args
        self.multiple_keys = _arrays(schema)

    def __getitem__(self, key: str) -> Any:
        if key not in self.data:
            return missing
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        # Mapping.get's try/except around __getitem__, which never raises here.
        return self[key]


@functools.cache
def _arrays(schema: ma.Schema) -> set[str]:
    """The names of a schema's fields that take every occurrence (webargs' rule)."""
    return MultiDictProxy({}, schema).multiple_keys  # read, never changed


@functools.cache
def _names(schema: ma.Schema) -> tuple[str, ...]:
    """The names a schema reads (its fields' data keys)."""
    return tuple(field.data_key or name for name, field in schema.load_fields.items())


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


def api_blueprint(name: str, import_name: str, resource: str, description: str) -> Blueprint:
    """The blueprint of a user's `resource` under /api/<user_id>/, behind the token check."""
    blueprint = Blueprint(
        name, import_name, url_prefix=f"/api/<user_id>/{resource}", description=description
    )
    blueprint.before_request(_authorize)
    return blueprint


def _authorize() -> None:
    """The one gate for every /api route: the token's subject must be the path's user."""
    req = current_request()
    if req.method == "OPTIONS":  # CORS preflights carry no token
        return
    assert req.view_args is not None
    user_id = req.view_args["user_id"]
    auth.authorize(user_id)
    if not USER_ID.fullmatch(user_id):
        errors.validation_failed({"user_id": [USER_ID_RULE]})


USER_ID_PARAMETER = {
    "in": "path",
    "name": "user_id",
    "required": True,
    "description": "The owner's id, as the auth provider issues it.",
    "schema": {"type": "string", "pattern": USER_ID_PATTERN, "minLength": 1, "maxLength": 128},
}


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


ETAG_HEADER = {
    "ETag": {
        "description": "The version as a strong ETag; send it back in `If-Match` to write "
        "only if nothing has changed since.",
        "required": True,
        "schema": {"type": "string", "example": '"3"'},
    }
}
LOCATION_HEADER = {
    "Location": {
        "description": "The new resource's URL.",
        "required": True,
        "schema": {"type": "string"},
    }
}
REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` when this repeats the response to an earlier request with "
        "the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
LINK_HEADER = {
    "Link": {
        "description": 'The next page: `<URL>; rel="next"` (RFC 8288). Absent on the last page.',
        "schema": {"type": "string"},
    }
}
_VERSION_TAG = re.compile(r"[0-9]{1,9}")


def etag(row: Row) -> str:
    return f'"{row["version"]}"'


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response, encoded here: views return these, so flask-smorest passes them
    through instead of dumping with the schema it documents (see `dump_task`)."""
    app = current_application()
    return app.response_class(app.json.dumps(body), status, headers, mimetype="application/json")


def not_modified(row: Row) -> Response | None:
    """304 when If-None-Match names the row's current version."""
    req = current_request()
    # Most reads send none: no header to parse (its absence is a KeyError caught inside).
    if "HTTP_IF_NONE_MATCH" in req.environ and req.if_none_match.contains_weak(str(row["version"])):
        return Response(status=304, headers={"ETag": etag(row)})
    return None


# A client sends the one ETag it read; a few more cost nothing. A bound keeps a header of
# thousands of tags from becoming a statement parameter of thousands.
MAX_IF_MATCH_TAGS = 64


def if_match() -> frozenset[int] | None:
    """The versions `If-Match` accepts; None when it sets no version (absent, or `*`).

    Strong comparison: weak or foreign tags match no version, so the write is a 412.
    """
    req = current_request()
    if not req.headers.get("If-Match", "").strip() or req.if_match.star_tag:
        return None
    if len(req.if_match.as_set(include_weak=True)) > MAX_IF_MATCH_TAGS:
        errors.validation_failed(
            {"If-Match": [f"At most {MAX_IF_MATCH_TAGS} entity tags; send the ETag you read."]}
        )
    tags = req.if_match.as_set()
    return frozenset(int(tag) for tag in tags if tag and _VERSION_TAG.fullmatch(tag))


def fingerprint(fields: Mapping[str, Any], resource: str = "task") -> str:
    """What identifies a create's body under an Idempotency-Key. A task's is its body
    alone (as before lists existed); a list's also says it is a list's."""
    encoded = json.dumps(fields, sort_keys=True, default=str)  # dates, ids
    if resource != "task":
        encoded = f"{resource}:{encoded}"
    return hashlib.sha256(encoded.encode()).hexdigest()


def refuse(outcome: Outcome, resource: str) -> NoReturn:
    """The error a write's verdict (anything but "ok") answers."""
    verdict = outcome.verdict
    if verdict == "not_found":
        errors.not_found(resource)
    if verdict == "stale":
        errors.precondition_failed(resource, f'"{outcome.plan["old_version"]}"')
    errors.refused(verdict, resource)


def recorded(conn: Connection, *, user_id: str, key: str, request_hash: str, what: str) -> Row:
    """The record of `key`, which an earlier request claimed: a 409 while that one is
    in flight, a 422 if it had another body (a new `what` needs a new key)."""
    record = keys.key_record(conn, user_id=user_id, key=key)
    if record is None or record["status"] is None:
        errors.conflict(
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            retry_after=1,
        )
    if record["request_hash"] != request_hash:
        errors.validation_failed(
            {
                "Idempotency-Key": [
                    f"Already used with another body; use a new key for a new {what}."
                ]
            }
        )
    return record


def create_once(
    resource: str,
    *,
    user_id: str,
    key: str,
    request_hash: str,
    created: uuid.UUID,
    create: Callable[[Any], Outcome],
    respond: Callable[[Row], Response],
) -> Response:
    """Create under an Idempotency-Key: at most two database round trips.

    The claim first; then `create(then)` (the create, with the statement recording it
    as `then`, in its transaction), of the row whose id is `created`. A repeat with the
    same key and body gets `respond` of the row the first created; a repeat while the
    first is in flight, a 409; the key with another body, a 422.
    """
    conn = db.connection()
    if keys.claim_key(conn, user_id=user_id, key=key, request_hash=request_hash):
        then = keys.recording(
            conn.dialect.name, resource, user_id=user_id, key=key, created=created
        )
        try:
            outcome = create(then)
        except Exception:
            with contextlib.suppress(Exception):
                keys.release_key(conn, user_id=user_id, key=key)
            raise
        if outcome.verdict != OK:  # refused (a limit, a missing list): let a retry run
            keys.release_key(conn, user_id=user_id, key=key)
            refuse(outcome, resource)
        return respond(outcome.rows[0])
    record = recorded(conn, user_id=user_id, key=key, request_hash=request_hash, what=resource)
    if record["resource"] is None:  # recorded before lists existed: the body as it was sent
        response = current_app.response_class(
            record["response"], status=record["status"], mimetype="application/json"
        )
        response.headers["ETag"] = '"1"'
        response.headers["Location"] = url_for(
            "tasks.TaskById", user_id=user_id, task_id=record["task_id"]
        )
    else:
        response = respond(keys.replayed(record))
    response.headers["Idempotent-Replayed"] = "true"
    return response

"""Pages of tasks and of lists: signed cursors that say where the next page starts, and
its `Link`.

A cursor carries the last row's sort key and id, signed with SECRET_KEY (so any
instance can read it and nobody can forge one) and bound to the user, sort and filters
it was issued for. The page size may change from page to page.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from flask import current_app, url_for
from itsdangerous import BadData, URLSafeSerializer

from . import errors

_SALT = "tasks_api.list-cursor"
_VERSION = 2
_TIME_SORTS = ("-created_at", "created_at", "-updated_at", "updated_at")
# Sorts whose ties go newest first: the cursor also carries the row's created_at.
_TIE_SORTS = ("due_date", "-due_date", "priority", "-priority")
# Everything the cursor is bound to; `limit` may change between pages.
_SCOPE = ("sort", "completed", "status", "priority", "tag", "due_before", "due_after", "q")
# Filters added since: in the scope only when given, so earlier cursors stay valid.
_PLACE = ("list", "parent")
# Pages of lists are in their manual order; a cursor says which resource it pages.
LISTS = {"sort": "position", "resource": "lists"}


def start_after(user_id: str, args: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The (sort key, [created_at,] id) the requested page starts after; None for the
    first page."""
    cursor = args.get("cursor")
    if cursor is None:
        return None
    try:
        version, scope, *keys, task_id = _serializer().loads(cursor)
    except (BadData, ValueError, TypeError):
        errors.validation_failed({"cursor": ["Not a cursor of this list; start without one."]})
    if version != _VERSION or scope != _scope(user_id, args):
        errors.validation_failed(
            {"cursor": ["This cursor belongs to another sort or filter; start without one."]}
        )
    # Signed by this server for this sort, so these parse; the check costs nothing.
    try:
        sort = args["sort"]
        if sort in _TIE_SORTS:
            key, created_at = keys
            return (int(key), datetime.fromisoformat(created_at), uuid.UUID(task_id))
        (key,) = keys
        return (
            datetime.fromisoformat(key) if sort in _TIME_SORTS else str(key),
            uuid.UUID(task_id),
        )
    except (ValueError, TypeError):
        errors.validation_failed({"cursor": ["Not a cursor of this list; start without one."]})


def next_link(user_id: str, args: Mapping[str, Any], page: Sequence[Mapping[str, Any]]) -> str:
    """The `Link` header value pointing at the page after `page`."""
    last = page[-1]
    keys = [last["sort_key"]]
    if args["sort"] in _TIE_SORTS:
        keys.append(last["created_at"])
    cursor = _serializer().dumps(
        [
            _VERSION,
            _scope(user_id, args),
            *(key.isoformat() if isinstance(key, datetime) else key for key in keys),
            last["id"].hex,
        ]
    )
    names = (*_SCOPE, *_PLACE, "limit")
    params = {name: args[name] for name in names if args.get(name) is not None}
    if args.get("resource") == "lists":
        del params["sort"]  # a list page's order is its own
    if "completed" in params:
        params["completed"] = "true" if params["completed"] else "false"
    for name in ("status", "priority"):  # comma-separated, as they came
        if name in params:
            params[name] = ",".join(params[name])
    endpoint = "lists.Lists" if args.get("resource") == "lists" else "tasks.Tasks"
    url = url_for(endpoint, user_id=user_id, cursor=cursor, _external=True, **params)
    return f'<{url}>; rel="next"'


def _scope(user_id: str, args: Mapping[str, Any]) -> str:
    values = [user_id, *(args.get(name) for name in _SCOPE)]
    values += [f"{name}={args[name]}" for name in (*_PLACE, "resource") if args.get(name)]
    scope = json.dumps(values, default=str)
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def serializer(secret_key: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=_SALT)


def _serializer() -> URLSafeSerializer:
    signer: URLSafeSerializer = current_app.extensions["tasks_api.cursor_serializer"]
    return signer

"""What a bulk request may send (one action on up to 100 tasks) and what it answers."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from .fields import (
    RequestSchema,
    ResponseSchema,
    StrictBoolean,
    flat_messages,
    nullable_id,
)
from .tasks import TaskSchema, TaskUpdateSchema

ACTIONS = ("complete", "reopen", "delete", "move", "update")
BULK_MAX = 100
# What each action takes besides ids, if_match and atomic.
TAKES = {"move": "to", "update": "set"}
_STRONG_TAG = re.compile(r'"([0-9]{1,9})"')


class Ids(fields.List[uuid.UUID]):
    """Task ids whose item errors come as one list of messages (as `tags`' do)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[uuid.UUID | None]:
        # The common case without marshmallow's per-item machinery (~4 us an id, a
        # tenth of a 100-id request's own time); anything else takes the field's path.
        if isinstance(value, list) and all(type(item) is str for item in value):
            with contextlib.suppress(ValueError):
                return [uuid.UUID(item) for item in value]
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        except ma.ValidationError as error:
            raise ma.ValidationError(flat_messages(error.messages)) from None


class BulkPlaceSchema(RequestSchema):
    """Where a bulk `move` sends the tasks: the end of that list or parent's subtasks."""

    list_id = nullable_id(metadata={"description": "To this list (`null`: the inbox)."})
    parent_id = nullable_id(metadata={"description": "Under this task (`null`: top-level)."})


class BulkSchema(RequestSchema):
    """One action on up to 100 tasks, each changed as its own route would change it."""

    action = fields.String(
        required=True,
        validate=validate.OneOf(ACTIONS),
        metadata={
            "description": "`complete` and `reopen` (as `PATCH .../complete` with "
            "`completed` true or false), `delete`, `move` (with `to`), `update` (with "
            "`set`)."
        },
    )
    ids = Ids(
        fields.UUID(),
        required=True,
        validate=validate.Length(min=1, max=BULK_MAX),
        metadata={"description": f"1 to {BULK_MAX} distinct task ids; results follow this order."},
    )
    if_match = fields.Dict(
        keys=fields.UUID(),
        values=fields.String(validate=validate.Length(max=64)),
        metadata={
            "description": 'Per id, the ETag the client holds (`"3"`): that task changes '
            "only if it still has it (else its result is a 412).",
            "example": {"6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10": '"3"'},
        },
    )
    atomic = StrictBoolean(
        load_default=False,
        metadata={
            "description": "All or nothing: if any id would not be 200 or 204, nothing "
            "changes and the answer is a 409 listing each failing id."
        },
    )
    to = fields.Nested(
        BulkPlaceSchema,
        metadata={
            "description": "`move` only: the list and/or parent; the tasks go to its end, "
            "in the order they had. `{}`: to the end of where each is."
        },
    )
    set = fields.Nested(
        TaskUpdateSchema,
        metadata={"description": "`update` only: the fields to set, as in a `PUT`."},
    )

    @ma.validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        problems: dict[str, list[str]] = {}
        ids: list[uuid.UUID] = data.get("ids", [])
        seen: set[uuid.UUID] = set()
        repeated: list[str] = []
        for task_id in ids:
            if task_id in seen:
                repeated.append(str(task_id))
            seen.add(task_id)
        if repeated:
            problems["ids"] = [f"Each id once; repeated: {', '.join(repeated)}."]
        action = data.get("action")
        for name in TAKES.values():
            if name in data and TAKES.get(action or "") != name:
                problems[name] = [f"Only `{_taker(name)}` takes `{name}`."]
        if action in TAKES and TAKES[action] not in data:
            problems[TAKES[action]] = [f"`{action}` needs `{TAKES[action]}`."]
        strangers = [str(i) for i in data.get("if_match", {}) if i not in seen]
        if strangers:
            problems["if_match"] = [f"Not among `ids`: {', '.join(strangers)}."]
        if problems:
            raise ma.ValidationError(problems)


def _taker(name: str) -> str:
    return next(action for action, takes in TAKES.items() if takes == name)


def expected_version(etag: str) -> int:
    """The version a strong ETag names; -1 (no version) for a weak or foreign one, whose
    task is then a 412, as with `If-Match`."""
    found = _STRONG_TAG.fullmatch(etag.strip())
    return int(found.group(1)) if found else -1


class BulkResultSchema(ResponseSchema):
    id = fields.UUID(required=True)
    status = fields.Integer(
        required=True,
        metadata={
            "description": "200 (changed, or already so: `task`), 204 (deleted), 404, 409 "
            "(a limit), 412 (its `if_match` is stale), 422 (`errors`: the action cannot "
            "apply to it)."
        },
    )
    task = fields.Nested(TaskSchema, metadata={"description": "With a 200: the task now."})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "With a 422 or 409: why, by field."},
    )


class BulkResultsSchema(ResponseSchema):
    results = fields.List(fields.Nested(BulkResultSchema), required=True)

"""What a task request may send and what a task response carries."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from ..models import DESCRIPTION_MAX, PRIORITIES, STATUSES, TITLE_MAX
from .fields import (
    TAGS_MAX,
    CalendarDate,
    FlatList,
    FormList,
    QueryArgsSchema,
    RequestSchema,
    ResponseSchema,
    StrictBoolean,
    Tag,
    Tags,
    Text,
    Timestamp,
    nullable_id,
    page_limit,
    rfc3339,
)

SORTS = (
    "-created_at",
    "created_at",
    "-updated_at",
    "updated_at",
    "title",
    "-title",
    "due_date",
    "-due_date",
    "priority",
    "-priority",
    "position",
)
SERVER_SET = (
    "id",
    "user_id",
    "position",
    "completed_at",
    "created_at",
    "updated_at",
    "version",
)


def _title(**kwargs: Any) -> Text:
    return Text(
        strip=True,
        validate=validate.Length(min=1, max=TITLE_MAX),
        metadata={
            "description": f"1 to {TITLE_MAX} characters once surrounding whitespace is trimmed.",
            "example": "Buy milk",
        },
        **kwargs,
    )


def _description() -> Text:
    return Text(
        allow_none=True,
        validate=validate.Length(max=DESCRIPTION_MAX),
        metadata={"example": "Two litres, semi-skimmed"},
    )


def _status(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.OneOf(STATUSES),
        metadata={
            "description": "A board's column. `completed` is true exactly when it is `done`.",
            **kwargs.pop("metadata", {}),
        },
        **kwargs,
    )


def _priority(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(PRIORITIES), **kwargs)


def _due_date(**kwargs: Any) -> CalendarDate:
    return CalendarDate(
        allow_none=True,
        metadata={"description": "A day in the user's calendar: no time, no time zone."},
        **kwargs,
    )


# The rule `TaskWriteSchema._one_state` checks, in JSON Schema, for the OpenAPI document:
# when a body has both, `completed` is true exactly when `status` is `done`.
ONE_STATE = {
    "allOf": [
        {
            "if": {"required": ["status", "completed"], "properties": {"status": {"const": s}}},
            "then": {"properties": {"completed": {"const": s == "done"}}},
        }
        for s in STATUSES
    ]
}


class TaskWriteSchema(RequestSchema):
    """What a create or an update may set; `status` and `completed` must agree."""

    SERVER_SET = SERVER_SET

    title = _title()
    description = _description()
    completed = StrictBoolean(
        metadata={
            "description": "`true` makes the status `done`; `false` makes a `done` task "
            "`todo` and leaves the others as they are."
        }
    )
    status = _status()
    priority = _priority()
    due_date = _due_date()
    tags = Tags()
    list_id = nullable_id(
        metadata={
            "description": "The task's list; `null`: the inbox. A new list puts the task "
            "last in it (and a subtask leaves its parent)."
        }
    )
    parent_id = nullable_id(
        metadata={
            "description": "The top-level task this one is a subtask of, which it joins "
            "last, in its list; `null`: top-level."
        }
    )

    @ma.validates_schema
    def _one_state(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "status" in data and "completed" in data:
            if (data["status"] == "done") != data["completed"]:
                message = "`completed` is true exactly when `status` is `done`; send one."
                raise ma.ValidationError({"status": [message], "completed": [message]})


class TaskCreateSchema(TaskWriteSchema):
    title = _title(required=True)
    completed = StrictBoolean(metadata={"description": "Defaults to false."})
    status = _status(metadata={"description": "Defaults to `todo` (`done` if completed)."})
    priority = _priority(metadata={"description": "Defaults to `medium`."})


class TaskUpdateSchema(TaskWriteSchema):
    @ma.validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ma.ValidationError("Send at least one of: " + ", ".join(self.fields) + ".")


class TaskMoveSchema(RequestSchema):
    """Where a task goes: after or before a sibling, or neither (last), optionally to
    another list or parent."""

    after = nullable_id(metadata={"description": "Put it right after this sibling; `null`: first."})
    before = fields.UUID(metadata={"description": "Put it right before this sibling."})
    list_id = nullable_id(
        metadata={"description": "Move it to this list (`null`: the inbox) at that place."}
    )
    parent_id = nullable_id(
        metadata={"description": "Make it a subtask of this task (`null`: top-level)."}
    )

    @ma.validates_schema
    def _one_place(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "after" in data and "before" in data:
            raise ma.ValidationError({"before": ["Send `after` or `before`, not both."]})


class TaskCompletionSchema(RequestSchema):
    completed = StrictBoolean(
        metadata={"description": "The state to set. Leave the body out to toggle instead."}
    )


class TaskQueryArgsSchema(QueryArgsSchema):
    """What a list request may ask for, in its query string. Filters combine."""

    completed = fields.Boolean(
        truthy={"true"},
        falsy={"false"},
        metadata={"description": "`true` or `false`: only the tasks in that state."},
    )
    status = FormList(
        fields.String(validate=validate.OneOf(STATUSES)),
        validate=validate.Length(min=1),
        metadata={
            "description": "Only tasks in one of these states. Repeat the parameter "
            "(`status=todo&status=in_progress`) or send them comma-separated "
            "(`status=todo,in_progress`), or both: the same."
        },
    )
    priority = FormList(
        fields.String(validate=validate.OneOf(PRIORITIES)),
        validate=validate.Length(min=1),
        metadata={
            "description": "Only tasks of one of these priorities. Repeat the parameter "
            "(`priority=high&priority=urgent`) or send them comma-separated "
            "(`priority=high,urgent`), or both: the same."
        },
    )
    tag = FlatList(
        Tag(),
        validate=validate.Length(max=TAGS_MAX),
        metadata={
            "description": "Only tasks that carry every tag given, ignoring case. Repeat "
            "the parameter, one tag each (`tag=home&tag=errands`): a comma is part of "
            "a tag (`tag=a,b` is the one tag `a,b`)."
        },
    )
    due_before = CalendarDate(
        metadata={"description": "Only tasks due on or before this day (undated ones left out)."}
    )
    due_after = CalendarDate(
        metadata={"description": "Only tasks due on or after this day (undated ones left out)."}
    )
    q = Text(
        validate=validate.Length(min=1, max=TITLE_MAX),
        metadata={
            "description": "Only tasks whose title or description contains this text, "
            "ignoring case; `%`, `_` and `\\` are taken literally."
        },
    )
    list = fields.String(
        validate=validate.Regexp(
            r"^(inbox|[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12})$",
            error="Must be a list's id or `inbox`.",
        ),
        metadata={
            "description": "Only the tasks of this list (its id), or of the inbox (`inbox`)."
        },
    )
    parent = fields.String(
        validate=validate.Regexp(
            r"^(none|[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12})$",
            error="Must be a task's id or `none`.",
        ),
        metadata={
            "description": "Only this task's subtasks (its id), or top-level tasks (`none`)."
        },
    )

    sort = fields.String(
        load_default="-created_at",
        validate=validate.OneOf(SORTS),
        metadata={
            "description": "Order of the list; `-` for descending. `priority` goes by rank "
            "(`low` < `medium` < `high` < `urgent`); tasks without a due date come last in "
            "both `due_date` sorts. Ties go newest first in the due date and priority "
            "sorts, by `id` in the sort's direction in the others. `position` is the "
            "manual order: it needs `list` (that list's top-level tasks) or `parent`."
        },
    )
    limit = page_limit()
    cursor = fields.String(
        validate=validate.Length(max=2048),
        metadata={
            "description": "Where the page starts: copy it from the `next` link of the "
            "previous page, with the same `sort` and filters."
        },
    )

    @ma.validates_schema
    def _position_needs_a_group(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("sort") == "position" and "list" not in data and "parent" not in data:
            raise ma.ValidationError(
                {
                    "sort": [
                        "`sort=position` is the order within a list or a parent: "
                        "send `list` or `parent` too."
                    ]
                }
            )

    @ma.post_load
    def _ids(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        for name, word in (("list", "inbox"), ("parent", "none")):
            if data.get(name) not in (None, word):
                data[name] = uuid.UUID(data[name])
        return data


class TaskSchema(ResponseSchema):
    id = fields.UUID(required=True)
    user_id = fields.String(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True, allow_none=True)
    completed = fields.Boolean(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    priority = fields.String(required=True, validate=validate.OneOf(PRIORITIES))
    due_date = fields.Date(required=True, allow_none=True, metadata={"example": "2026-12-01"})
    tags = fields.List(fields.String(), required=True, metadata={"example": ["errands"]})
    list_id = fields.UUID(
        required=True, allow_none=True, metadata={"description": "Its list; null: the inbox."}
    )
    parent_id = fields.UUID(
        required=True,
        allow_none=True,
        metadata={"description": "The task it is a subtask of; null: top-level."},
    )
    position = fields.String(
        required=True,
        metadata={
            "description": "Its place among its siblings (same list and parent): compare "
            "positions as plain strings for the manual order. Opaque, at most 64 characters.",
            "example": "5000000000",
        },
    )
    completed_at = Timestamp(
        required=True,
        allow_none=True,
        metadata={"description": "When the task last became completed; null while it is not."},
    )
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True)
    version = fields.Integer(
        required=True,
        metadata={"description": "Starts at 1 and grows by one on every change."},
    )


def dump_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """What `TaskSchema().dump(task)` gives, built directly.

    Responses are encoded with this; TaskSchema documents them. marshmallow's field
    machinery cost ~15 us a task, more than the rest of a list request's encoding, so
    a list of 20 spent longer in `dump` than in the database. tests/test_schemas.py
    holds the two to the same output, and CI's schemathesis run checks every response
    against the OpenAPI document.
    """
    completed_at, due_date = task["completed_at"], task["due_date"]
    return {
        "id": str(task["id"]),
        "user_id": task["user_id"],
        "title": task["title"],
        "description": task["description"],
        "completed": task["completed"],
        "status": task["status"],
        "priority": task["priority"],
        "due_date": None if due_date is None else due_date.isoformat(),
        "tags": list(task["tags"]),
        "list_id": None if task["list_id"] is None else str(task["list_id"]),
        "parent_id": None if task["parent_id"] is None else str(task["parent_id"]),
        "position": task["position"],
        "completed_at": None if completed_at is None else rfc3339(completed_at),
        "created_at": rfc3339(task["created_at"]),
        "updated_at": rfc3339(task["updated_at"]),
        "version": task["version"],
    }

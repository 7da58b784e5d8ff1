"""What a list request may send and what a list response carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from ..models import LIST_TITLE_MAX
from .fields import RequestSchema, ResponseSchema, Text, Timestamp, nullable_id, rfc3339

SERVER_SET = ("id", "position", "open_tasks", "created_at", "updated_at", "version")


def _title(**kwargs: Any) -> Text:
    return Text(
        strip=True,
        validate=validate.Length(min=1, max=LIST_TITLE_MAX),
        metadata={
            "description": f"1 to {LIST_TITLE_MAX} characters once surrounding whitespace is "
            "trimmed.",
            "example": "Groceries",
        },
        **kwargs,
    )


class ListWriteSchema(RequestSchema):
    SERVER_SET = SERVER_SET

    title = _title()


class ListCreateSchema(ListWriteSchema):
    title = _title(required=True)


class ListUpdateSchema(ListWriteSchema):
    @ma.validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ma.ValidationError("Send at least one of: title.")


class ListMoveSchema(RequestSchema):
    """Where a list goes among the user's lists: after or before another, or last."""

    after = nullable_id(metadata={"description": "Put it right after this list; `null`: first."})
    before = fields.UUID(metadata={"description": "Put it right before this list."})

    @ma.validates_schema
    def _one_place(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "after" in data and "before" in data:
            raise ma.ValidationError({"before": ["Send `after` or `before`, not both."]})


class ListSchema(ResponseSchema):
    id = fields.UUID(required=True)
    title = fields.String(required=True)
    position = fields.String(
        required=True,
        metadata={
            "description": "Its place in the user's order: compare positions as plain "
            "strings. Opaque, at most 64 characters.",
            "example": "5000000000",
        },
    )
    open_tasks = fields.Integer(
        required=True,
        metadata={
            "description": "How many of its tasks (subtasks included) are not done, as of "
            "this read. It does not change the list's version or ETag."
        },
    )
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True)
    version = fields.Integer(
        required=True, metadata={"description": "Starts at 1 and grows by one on every change."}
    )


def dump_list(row: Mapping[str, Any]) -> dict[str, Any]:
    """What `ListSchema().dump(row)` gives, built directly (as `dump_task` is)."""
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "position": row["position"],
        "open_tasks": row["open_tasks"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
        "version": row["version"],
    }

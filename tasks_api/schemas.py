"""Marshmallow schemas: what a request may send and what a response carries."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate
from webargs.fields import DelimitedList

from .models import DESCRIPTION_MAX, PRIORITIES, STATUSES, TITLE_MAX

USER_ID_PATTERN = r"^[A-Za-z0-9._@:|-]{1,128}$"
USER_ID = re.compile(USER_ID_PATTERN)
USER_ID_RULE = "Must be 1 to 128 characters of A-Z a-z 0-9 . _ @ : | -"
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
)
LIMIT_MAX = 500
LIMIT_DEFAULT = 100
CHANGES_LIMIT_MAX = 1000
CHANGES_LIMIT_DEFAULT = 500
TAGS_MAX = 20
TAG_MAX = 50
SERVER_SET = ("id", "user_id", "completed_at", "created_at", "updated_at", "version")


# What "surrounding whitespace" means for a title: Unicode White_Space plus the BOM.
# Spelled out, not `\s` or str.strip(), so the server and the OpenAPI pattern agree on
# every regex engine a client or a fuzzer may use.
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITESPACE += "\u2028\u2029\u202f\u205f\u3000\ufeff"
_WS_CLASS = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)


class Text(fields.String):
    """A string PostgreSQL can store: no NUL character, no lone UTF-16 surrogate.

    With `strip`, surrounding whitespace is removed and something must remain.
    """

    def __init__(self, *, strip: bool = False, **kwargs: Any) -> None:
        # The same rules as a JSON Schema pattern, for the OpenAPI document.
        pattern = f"^[^\\u0000]*[^\\u0000{_WS_CLASS}][^\\u0000]*$" if strip else "^[^\\u0000]*$"
        kwargs["metadata"] = {"pattern": pattern, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)
        self.strip = strip

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ma.ValidationError("Must not contain the NUL character.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ma.ValidationError("Must be valid Unicode text.") from None
        return text.strip(WHITESPACE) if self.strip else text


class CalendarDate(fields.Date):
    """A day as `YYYY-MM-DD` and nothing else (Python would also take 20261201)."""

    _FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {"example": "2026-12-01", **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str) or not self._FORM.fullmatch(value):
            raise self.make_error("invalid")
        parsed: date = super()._deserialize(value, attr, data, **kwargs)
        return parsed


# Control characters (Unicode Cc). Surrounding whitespace among them is trimmed first.
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f"


def _flat(messages: Any) -> list[str]:
    """An array's item errors as one list of messages, as a problem's `errors` promises:
    `{"2": ["Must ..."]}` becomes `["Item 2: Must ..."]`."""
    if not isinstance(messages, dict):
        return list(messages) if isinstance(messages, list) else [str(messages)]
    return [f"Item {index}: {text}" for index, item in messages.items() for text in _flat(item)]


class FlatList(fields.List[str]):
    """A list of strings whose item errors come as one list of messages."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[str | None]:
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        except ma.ValidationError as error:
            raise ma.ValidationError(_flat(error.messages)) from None


class FlatDelimitedList(DelimitedList):
    """`a,b,c` in a query string, item errors as one list of messages."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            return super()._deserialize(value, attr, data, **kwargs)  # type: ignore[no-untyped-call]
        except ma.ValidationError as error:
            raise ma.ValidationError(_flat(error.messages)) from None


class Tag(Text):
    """One tag: 1 to 50 characters once surrounding whitespace is trimmed, no control
    characters.

    The length is checked here rather than with a Length validator, which the document
    would show as a `maxLength` of the untrimmed string; the pattern says it exactly.
    """

    def __init__(self) -> None:
        outer, inner = f"[{_WS_CLASS}]*", f"[^{_CONTROL}]"
        edge = f"[^{_CONTROL}{_WS_CLASS}]"
        super().__init__(
            strip=True,
            metadata={
                "pattern": f"^{outer}{edge}(?:{inner}{{0,{TAG_MAX - 2}}}{edge})?{outer}$",
                "description": f"1 to {TAG_MAX} characters once surrounding whitespace is "
                "trimmed; no control characters.",
                "example": "errands",
            },
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        tag: str = super()._deserialize(value, attr, data, **kwargs)
        if not 1 <= len(tag) <= TAG_MAX:
            raise ma.ValidationError(
                f"Must be 1 to {TAG_MAX} characters once surrounding whitespace is trimmed."
            )
        if any(unicodedata.category(char) == "Cc" for char in tag):
            raise ma.ValidationError("Must not contain control characters.")
        return tag


class Tags(FlatList):
    """0 to 20 tags, kept in order with repeats that differ only in case dropped (the
    first spelling wins)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            Tag(),
            validate=validate.Length(max=TAGS_MAX),
            metadata={
                "description": f"0 to {TAGS_MAX} tags of 1 to {TAG_MAX} characters once "
                "surrounding whitespace is trimmed, no control characters. Stored "
                "trimmed, in order, without repeats that differ only in case (the first "
                "spelling is kept). Sending `tags` replaces them all.",
                "example": ["errands", "home"],
            },
            **kwargs,
        )

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[str | None]:
        if isinstance(value, list) and len(value) > TAGS_MAX:  # as sent, repeats and all
            raise ma.ValidationError(f"Send at most {TAGS_MAX} tags.")
        tags = super()._deserialize(value, attr, data, **kwargs)
        seen: set[str] = set()
        kept: list[str | None] = []
        for tag in tags:
            assert tag is not None  # Tag() takes no null
            if tag.casefold() not in seen:
                seen.add(tag.casefold())
                kept.append(tag)
        return kept


class StrictBoolean(fields.Boolean):
    """JSON `true` or `false` only; marshmallow's Boolean would also take "yes" or 1."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Timestamp(fields.DateTime):
    """RFC 3339 in UTC with microseconds and a `Z`: 2026-11-25T14:03:07.123456Z."""

    def _serialize(
        self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any
    ) -> str | None:
        return None if value is None else rfc3339(value)


def rfc3339(value: datetime) -> str:
    """2026-11-25T14:03:07.123456Z: UTC, always with microseconds."""
    if value.utcoffset():  # PostgreSQL answers in the session's time zone
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:26] + "Z"


class RequestSchema(ma.Schema):
    """A request body: unknown fields are an error, server-set ones say so."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _reject_server_set(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        errors = {name: ["Set by the server; leave it out."] for name in SERVER_SET if name in data}
        if errors:
            raise ma.ValidationError(errors)
        return data


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


class TaskCompletionSchema(RequestSchema):
    completed = StrictBoolean(
        metadata={"description": "The state to set. Leave the body out to toggle instead."}
    )


class ResponseSchema(ma.Schema):
    """A response body. Its OpenAPI schema stays open to members added later."""

    class Meta:
        unknown = ma.EXCLUDE


class IdempotencyHeadersSchema(ma.Schema):
    """The headers a create may carry."""

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Regexp(
            r"^[\x20-\x7e]{1,255}$", error="Must be 1 to 255 printable ASCII characters."
        ),
        metadata={
            "description": "Makes retries safe: a repeat with the same key and body within "
            "24 hours returns the first response and creates nothing. A UUID per form "
            "submission is a good key."
        },
    )


class TaskQueryArgsSchema(ma.Schema):
    """What a list request may ask for, in its query string. Filters combine."""

    completed = fields.Boolean(
        truthy={"true"},
        falsy={"false"},
        metadata={"description": "`true` or `false`: only the tasks in that state."},
    )
    status = FlatDelimitedList(
        fields.String(validate=validate.OneOf(STATUSES)),
        validate=validate.Length(min=1),
        metadata={"description": "Only tasks in one of these states (comma-separated)."},
    )
    priority = FlatDelimitedList(
        fields.String(validate=validate.OneOf(PRIORITIES)),
        validate=validate.Length(min=1),
        metadata={"description": "Only tasks of one of these priorities (comma-separated)."},
    )
    tag = FlatList(
        Tag(),
        validate=validate.Length(max=TAGS_MAX),
        metadata={
            "description": "Repeatable: only tasks that carry every tag given, ignoring case."
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
    sort = fields.String(
        load_default="-created_at",
        validate=validate.OneOf(SORTS),
        metadata={
            "description": "Order of the list; `-` for descending. `priority` goes by rank "
            "(`low` < `medium` < `high` < `urgent`); tasks without a due date come last in "
            "both `due_date` sorts. Ties go newest first in the due date and priority "
            "sorts, by `id` in the sort's direction in the others."
        },
    )
    limit = fields.Integer(
        load_default=LIMIT_DEFAULT,
        validate=validate.Range(min=1, max=LIMIT_MAX),
        metadata={"description": "Page size."},
    )
    cursor = fields.String(
        validate=validate.Length(max=2048),
        metadata={
            "description": "Where the page starts: copy it from the `next` link of the "
            "previous page, with the same `sort` and filters."
        },
    )


class ChangesQueryArgsSchema(ma.Schema):
    """What a sync request may ask for, in its query string."""

    since = fields.String(
        validate=validate.Length(min=1, max=1024),
        metadata={
            "description": "The `next` token of the previous answer; leave it out to start "
            "(every task, page by page)."
        },
    )
    limit = fields.Integer(
        load_default=CHANGES_LIMIT_DEFAULT,
        validate=validate.Range(min=1, max=CHANGES_LIMIT_MAX),
        metadata={"description": "At most this many entries of `changes` and `deleted` together."},
    )


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
        "completed_at": None if completed_at is None else rfc3339(completed_at),
        "created_at": rfc3339(task["created_at"]),
        "updated_at": rfc3339(task["updated_at"]),
        "version": task["version"],
    }


class ChangesSchema(ResponseSchema):
    """What changed since the token: apply it, then call again with `next`."""

    changes = fields.List(
        fields.Nested(TaskSchema),
        required=True,
        metadata={"description": "Tasks created or changed, each in its current state, once."},
    )
    deleted = fields.List(
        fields.UUID(),
        required=True,
        metadata={"description": "Ids of tasks deleted (an id the client never had may come)."},
    )
    next = fields.String(
        required=True,
        metadata={"description": "The token for the next call; keep it even when nothing changed."},
    )
    more = fields.Boolean(
        required=True,
        metadata={"description": "`true`: more changes wait; call again at once with `next`."},
    )


class HealthSchema(ResponseSchema):
    status = fields.String(required=True, metadata={"example": "ok"})


class ProblemSchema(ResponseSchema):
    """An error, as RFC 9457 problem details."""

    type = fields.String(required=True, metadata={"example": "about:blank"})
    title = fields.String(required=True, metadata={"example": "Not Found"})
    status = fields.Integer(required=True, metadata={"example": 404})
    detail = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={
            "description": "Validation failures: each offending field (or `json`, "
            "`query` or `path` for the whole location) mapped to its messages."
        },
    )
    request_id = fields.String(
        metadata={"description": "Quote it when reporting the failure; it is in the logs."}
    )

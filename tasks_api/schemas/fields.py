"""What requests and responses of every resource share: field types that say exactly
what they take, base schemas, paging, problems."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

USER_ID_PATTERN = r"^[A-Za-z0-9._@:|-]{1,128}$"
USER_ID = re.compile(USER_ID_PATTERN)
USER_ID_RULE = "Must be 1 to 128 characters of A-Z a-z 0-9 . _ @ : | -"
LIMIT_MAX = 500
LIMIT_DEFAULT = 100
TAGS_MAX = 20
TAG_MAX = 50
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


def flat_messages(messages: Any) -> list[str]:
    """An array's item errors as one list of messages, as a problem's `errors` promises:
    `{"2": ["Must ..."]}` becomes `["Item 2: Must ..."]`."""
    if not isinstance(messages, dict):
        return list(messages) if isinstance(messages, list) else [str(messages)]
    return [
        f"Item {index}: {text}" for index, item in messages.items() for text in flat_messages(item)
    ]


class FlatList(fields.List[str]):
    """A list of strings whose item errors come as one list of messages."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[str | None]:
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        except ma.ValidationError as error:
            raise ma.ValidationError(flat_messages(error.messages)) from None


class FormList(FlatList):
    """A query array sent as generated clients send one, the parameter repeated
    (`status=a&status=b`), or comma-separated (`status=a,b`), or both: their union,
    without repeats, in the order first given.

    A List to webargs (which reads every occurrence) and to apispec (which documents
    `style: form`, `explode: true`). Each occurrence splits on commas as webargs'
    DelimitedList does: an empty one is no item; an empty item among others is one,
    to be refused.
    """

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[str | None]:
        sent = ",".join(value) if isinstance(value, list | tuple) else value
        if not isinstance(sent, str):
            raise self.make_error("invalid")
        items = super()._deserialize(sent.split(",") if sent else [], attr, data, **kwargs)
        return list(dict.fromkeys(items))


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

    # The resource's fields only the server sets.
    SERVER_SET: tuple[str, ...] = ()

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _reject_server_set(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        errors = {
            name: ["Set by the server; leave it out."] for name in self.SERVER_SET if name in data
        }
        if errors:
            raise ma.ValidationError(errors)
        return data


def nullable_id(**kwargs: Any) -> fields.UUID:
    return fields.UUID(allow_none=True, **kwargs)


def page_limit() -> fields.Integer:
    return fields.Integer(
        load_default=LIMIT_DEFAULT,
        validate=validate.Range(min=1, max=LIMIT_MAX),
        metadata={"description": "Page size."},
    )


def page_cursor() -> fields.String:
    return fields.String(
        validate=validate.Length(max=2048),
        metadata={
            "description": "Where the page starts: copy it from the `next` link of the "
            "previous page."
        },
    )


class QueryArgsSchema(ma.Schema):
    """A route's query string: each parameter it defines, once, or repeated where it
    is an array; anything else is a 422 naming it, never a filter dropped or half-read
    (webargs would read the first of a repeat and skip an unknown name).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = {field.data_key or name: field for name, field in self.load_fields.items()}
        self._names = frozenset(names)
        # What webargs reads as every occurrence (its MultiDictProxy's rule).
        self._arrays = frozenset(
            name
            for name, field in names.items()
            if getattr(field, "is_multiple", isinstance(field, fields.List | fields.Tuple))
        )

    @ma.validates_schema(pass_original=True, skip_on_field_errors=False)
    def _each_parameter_once(self, data: Any, original: Any, **kwargs: Any) -> None:
        # One pass over the request's MultiDict, which webargs' proxy lends its methods;
        # a plain mapping (a schema loaded directly) holds each name once anyway.
        sent = getattr(original, "lists", None)
        if sent is None:
            return
        errors: dict[str, list[str]] = {}
        for name, values in sent():
            if name not in self._names:
                errors[name] = [self._unknown(name)]
            elif len(values) > 1 and name not in self._arrays:
                errors[name] = [f"Given {len(values)} times; send it once."]
        if errors:
            raise ma.ValidationError(errors)

    def _unknown(self, name: str) -> str:
        array = name.removesuffix("[]")
        if array != name and array in self._arrays:
            return (
                f"Not a parameter of this route: send `{array}` without brackets, once per value."
            )
        return "Not a parameter of this route, which takes: " + ", ".join(sorted(self._names)) + "."


class PageArgsSchema(QueryArgsSchema):
    """The query string of a page of a resource in its own order."""

    limit = page_limit()
    cursor = page_cursor()


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

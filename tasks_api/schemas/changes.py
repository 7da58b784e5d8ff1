"""What a sync request may ask for, and what it answers."""

from __future__ import annotations

from marshmallow import fields, validate

from .fields import QueryArgsSchema, ResponseSchema
from .lists import ListSchema
from .tasks import TaskSchema

CHANGES_LIMIT_MAX = 1000
CHANGES_LIMIT_DEFAULT = 500


class ChangesQueryArgsSchema(QueryArgsSchema):
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
        metadata={"description": "At most this many entries of the four arrays together."},
    )


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
    lists = fields.List(
        fields.Nested(ListSchema),
        required=True,
        metadata={
            "description": "Lists created or changed, each in its current state, once "
            "(`open_tasks` as of this read)."
        },
    )
    deleted_lists = fields.List(
        fields.UUID(),
        required=True,
        metadata={"description": "Ids of lists deleted (their tasks' ids are in `deleted`)."},
    )
    next = fields.String(
        required=True,
        metadata={"description": "The token for the next call; keep it even when nothing changed."},
    )
    more = fields.Boolean(
        required=True,
        metadata={"description": "`true`: more changes wait; call again at once with `next`."},
    )

"""What every statement about one task shares: the row as it reads (its columns, and
its JSON as PostgreSQL writes it), reading one, the user's limits, and what each write's
plan starts from. The writes are by what they do: creating.py, changing.py (PUT,
completion, move) and deleting.py; where a task goes is placing.py, and the two writes
that need no lock first are shortcuts.py. Pages of tasks are listing.py.

Statements are built once (a few variants per operation, cached) and run as `db.Query`s
with their values as parameters. Writes follow tasks_api/repository/writes.py: a plan
decided under the user's lock, and steps. Functions take the request's connection
(autocommit) and return rows as mappings; they know nothing of HTTP or JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    null,
    select,
)

from ..db import Query
from ..models import POSITIONS, TASKS
from .writes import Row, if_match_params, now, owner

# A user's limits (API.md, "Limits for each user").
MAX_TASKS = 100_000
MAX_SUBTASKS = 200
# What a task row reads as: every column but the case-folded tags, which only the `tag`
# filter uses, the change position, which only the sync feed does, and top_level_id,
# which only the foreign key does.
COLUMNS = tuple(c for c in TASKS.c if c.key not in ("tag_keys", "change_position", "top_level_id"))
# The columns a create sets (top_level_id is generated).
WRITTEN = tuple(c for c in TASKS.c if c.key != "top_level_id")
INBOX: Literal["inbox"] = "inbox"  # the `list` filter's value for the tasks in no list
TOP_LEVEL: Literal["none"] = "none"  # the `parent` filter's value for tasks without one

# --- reading one ---------------------------------------------------------------------------


def task_id_param() -> ColumnElement[uuid.UUID]:
    return bindparam("task_id", type_=TASKS.c.id.type)


# The task's fields in the order the API answers them (tests/test_listing.py holds them to
# schemas.tasks.dump_task's), timestamps in RFC 3339 with microseconds and a Z, dates
# ISO: PostgreSQL writes the JSON of the tasks a read returns. Reading 17 columns of 21
# rows into Python objects, then dumping them, cost ~200 us of a list's CPU.
_TIMESTAMP = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
TASK_FIELDS = (
    "id",
    "user_id",
    "title",
    "description",
    "completed",
    "status",
    "priority",
    "due_date",
    "tags",
    "list_id",
    "parent_id",
    "position",
    "completed_at",
    "created_at",
    "updated_at",
    "version",
)


def _field(name: str) -> str:
    column = f"tasks.{name}"
    if name.endswith("_at"):
        return f"{_TIMESTAMP.format(column)} AS {name}"
    if name == "due_date":
        return f"to_char({column}, 'YYYY-MM-DD') AS {name}"
    return column


# Correlated with the statement's own `tasks` (not an alias): each read selects from it.
TASK_JSON: ColumnElement[str] = literal_column(
    f"(SELECT row_to_json(task)::text FROM (SELECT {', '.join(map(_field, TASK_FIELDS))}) task)"
)


_GET = Query(select(*COLUMNS).where(TASKS.c.user_id == owner(), TASKS.c.id == task_id_param()))
_GET_JSON = Query(
    select(TASK_JSON.label("task_json"), TASKS.c.version).where(
        TASKS.c.user_id == owner(), TASKS.c.id == task_id_param()
    )
)


def get_task(
    conn: Connection, *, user_id: str, task_id: uuid.UUID, encoded: bool = False
) -> Row | None:
    """The task; `encoded`: on PostgreSQL, as the API's JSON text (`task_json`) and its
    `version` only."""
    query = _GET_JSON if encoded and conn.dialect.name == "postgresql" else _GET
    return query.row(conn, owner=user_id, task_id=task_id)


def tag_key(tag: str) -> str:
    """What two tags that differ only in case have in common."""
    return tag.casefold()


# --- what the writes share (creating.py, changing.py, deleting.py, shortcuts.py) -----------


def none(column: Any) -> Any:
    """NULL of the column's type: PostgreSQL takes an untyped NULL for text."""
    return null().cast(column.type)


def count_subtasks(parent: Any, *where: Callable[[FromClause], ColumnElement[bool]]) -> Any:
    """How many subtasks `parent` has (that satisfy `where`)."""
    s = TASKS.alias("s")
    return (
        select(func.count())
        .select_from(s)
        .where(s.c.user_id == owner(), s.c.parent_id == parent, *(w(s) for w in where))
        .scalar_subquery()
    )


def found_rows(*, task: bool = True) -> Select[Any]:
    """The user's row (the write's `base`: the change counter before it; the task count)
    and, when `task`, the task named by `task_id`, its columns as old_* (NULL when it is
    not the user's)."""
    me = POSITIONS.alias("me")
    columns: list[Any] = [me.c.position.label("base"), me.c.tasks.label("task_count")]
    if not task:
        return select(*columns).where(me.c.user_id == owner())
    t = TASKS.alias("t")
    columns += [c.label(f"old_{c.key}") for c in t.c if c.key not in ("top_level_id", "user_id")]
    return (
        select(*columns)
        .select_from(me.outerjoin(t, and_(t.c.user_id == owner(), t.c.id == task_id_param())))
        .where(me.c.user_id == owner())
    )


def open_count(status: Any) -> ColumnElement[int]:
    return case((status != literal("done"), 1), else_=0)


def change_params(
    user_id: str, task_id: uuid.UUID, versions: Collection[int] | None
) -> dict[str, Any]:
    return {**if_match_params(versions), "owner": user_id, "task_id": task_id, "now": now()}

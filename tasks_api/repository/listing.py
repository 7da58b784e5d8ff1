"""The statement that lists a user's tasks: a page in one of the sorts, narrowed by the
filters, after a cursor. One variant per sort and set of filters present, built once.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Text,
    any_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ..db import Query
from ..models import PRIORITY_RANK, PRIORITY_RANK_REVERSED, TASKS, due_key
from .tasks import COLUMNS, INBOX, TASK_JSON, TOP_LEVEL, tag_key
from .writes import Row, owner

# Each list sort: the keys it orders by (then by id), all in one direction, and whether
# that is descending. Each has an index on (user_id, *keys, id), so a page is a range
# scan of that index. The four sorts whose ties go newest first order by a key that
# runs backwards where needed (a negated rank or day number), then created_at. The
# manual order's index starts with the group (user_id, list_id or parent_id).
SORT_KEYS: dict[str, tuple[tuple[ColumnElement[Any], ...], bool]] = {
    "-created_at": ((TASKS.c.created_at,), True),
    "created_at": ((TASKS.c.created_at,), False),
    "-updated_at": ((TASKS.c.updated_at,), True),
    "updated_at": ((TASKS.c.updated_at,), False),
    "title": ((func.lower(TASKS.c.title),), False),
    "-title": ((func.lower(TASKS.c.title),), True),
    "due_date": ((due_key(descending=False), TASKS.c.created_at), True),
    "-due_date": ((due_key(descending=True), TASKS.c.created_at), True),
    "priority": ((PRIORITY_RANK_REVERSED, TASKS.c.created_at), True),
    "-priority": ((PRIORITY_RANK, TASKS.c.created_at), True),
    "position": ((TASKS.c.position,), False),
}
LIKE_ESCAPE = "/"


# --- listing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What a list is narrowed to; None (or empty) means not narrowed by that."""

    statuses: Collection[str] | None = None  # any of these
    priorities: Collection[str] | None = None  # any of these
    tags: Collection[str] = ()  # every one of these, ignoring case
    due_after: date | None = None  # inclusive; undated tasks are left out
    due_before: date | None = None
    q: str | None = None
    list: uuid.UUID | Literal["inbox"] | None = None
    parent: uuid.UUID | Literal["none"] | None = None


def list_tasks(
    conn: Connection,
    *,
    user_id: str,
    sort: str = "-created_at",
    filters: Filters = Filters(),
    limit: int,
    after: tuple[Any, ...] | None = None,
    encoded: bool = False,
) -> Sequence[Row]:
    """One page of the user's tasks in `sort` order, starting past the row `after`.

    `after` is the previous page's last row as (`sort_key`, [`created_at`,] `id`): the
    values of the sort's keys, then its id; every row comes with its `sort_key`. Keyset
    paging: a page costs the same at any depth, and rows added or removed meanwhile
    never shift the others. `sort="position"` needs a `list` or `parent` filter: without
    `parent`, it orders the list's top-level tasks. `encoded`: on PostgreSQL, rows carry
    the task as the API's JSON text (`task_json`) instead of its columns.
    """
    params: dict[str, Any] = {"owner": user_id, "limit": limit}
    sqlite = conn.dialect.name == "sqlite"
    if filters.statuses is not None:
        params["statuses"] = _list_param(sorted(filters.statuses), sqlite)
    if filters.priorities is not None:
        params["priorities"] = _list_param(sorted(filters.priorities), sqlite)
    if filters.tags:
        params["tags"] = _list_param(sorted({tag_key(tag) for tag in filters.tags}), sqlite)
    by_due = filters.due_after is not None or filters.due_before is not None
    if by_due:
        params["due_after"] = filters.due_after or date.min
        params["due_before"] = filters.due_before or date.max
    if filters.q is not None:
        params["pattern"] = "%" + _escape_like(filters.q) + "%"
    if isinstance(filters.list, uuid.UUID):
        params["in_list"] = filters.list
    if isinstance(filters.parent, uuid.UUID):
        params["under"] = filters.parent
    if after is not None:
        *keys, params["after_id"] = after
        params.update({f"after_key_{i}": key for i, key in enumerate(keys)})
    query = list_query(
        conn.dialect.name,
        sort,
        ListVariant(
            by_status=filters.statuses is not None,
            by_priority=filters.priorities is not None,
            by_tags=bool(filters.tags),
            by_due=by_due,
            by_text=filters.q is not None,
            after=after is not None,
            in_list=None if filters.list is None else "inbox" if filters.list == INBOX else "id",
            under=None
            if filters.parent is None
            else "none"
            if filters.parent == TOP_LEVEL
            else "id",
            encoded=encoded,
        ),
    )
    return query.rows(conn, **params)


@dataclass(frozen=True)
class ListVariant:
    """Which clauses a list statement has: with the dialect and sort, its cache key."""

    by_status: bool = False
    by_priority: bool = False
    by_tags: bool = False
    by_due: bool = False
    by_text: bool = False
    after: bool = False
    in_list: Literal["inbox", "id"] | None = None
    under: Literal["none", "id"] | None = None
    encoded: bool = False  # PostgreSQL: each task as the API's JSON (tasks.TASK_JSON)


# Built when first asked for: the variants a client can reach, per dialect and sort.
@functools.cache
def list_query(dialect: str, sort: str, variant: ListVariant) -> Query:
    """The list statement for one dialect, sort and set of filters."""
    keys, descending = SORT_KEYS[sort]
    columns: Sequence[ColumnElement[Any]] = COLUMNS
    if variant.encoded and dialect == "postgresql":
        # What a page's next cursor needs besides (tasks_api/pages.py).
        columns = (TASK_JSON.label("task_json"), TASKS.c.created_at, TASKS.c.id)
    stmt = select(*columns, keys[0].label("sort_key")).where(TASKS.c.user_id == owner())
    if variant.by_status:
        stmt = stmt.where(_any_of(TASKS.c.status, "statuses", dialect))
    if variant.by_priority:
        stmt = stmt.where(_any_of(TASKS.c.priority, "priorities", dialect))
    if variant.by_tags:
        stmt = stmt.where(_has_every_tag(dialect))
    if variant.by_due:
        stmt = stmt.where(
            TASKS.c.due_date >= bindparam("due_after", type_=TASKS.c.due_date.type),
            TASKS.c.due_date <= bindparam("due_before", type_=TASKS.c.due_date.type),
        )
    if variant.by_text:
        pattern = bindparam("pattern", type_=TASKS.c.title.type)
        stmt = stmt.where(
            or_(
                TASKS.c.title.ilike(pattern, escape=LIKE_ESCAPE),
                TASKS.c.description.ilike(pattern, escape=LIKE_ESCAPE),
            )
        )
    if variant.in_list == "inbox":
        stmt = stmt.where(TASKS.c.list_id.is_(None))
    elif variant.in_list == "id":
        stmt = stmt.where(TASKS.c.list_id == bindparam("in_list", type_=TASKS.c.list_id.type))
    if variant.under == "none" or (sort == "position" and variant.under is None):
        stmt = stmt.where(TASKS.c.parent_id.is_(None))
    elif variant.under == "id":
        stmt = stmt.where(TASKS.c.parent_id == bindparam("under", type_=TASKS.c.parent_id.type))
    if variant.after:
        position = tuple_(*keys, TASKS.c.id)
        bound = tuple_(
            *(bindparam(f"after_key_{i}", type_=key.type) for i, key in enumerate(keys)),
            bindparam("after_id", type_=TASKS.c.id.type),
        )
        stmt = stmt.where(position < bound if descending else position > bound)
    columns = (*keys, TASKS.c.id)
    order = [c.desc() if descending else c.asc() for c in columns]
    return Query(stmt.order_by(*order).limit(bindparam("limit")))


def _list_param(values: Sequence[str], sqlite: bool) -> Any:
    # PostgreSQL takes a text[]; SQLite reads a JSON array with json_each.
    return json.dumps(values) if sqlite else list(values)


def _any_of(column: ColumnElement[str], name: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        return column.in_(
            select(literal_column("value")).select_from(func.json_each(bindparam(name)))
        )
    return column == any_(bindparam(name, type_=ARRAY(Text())))


def _has_every_tag(dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        # No tag asked for is missing from the task's.
        wanted = func.json_each(bindparam("tags")).table_valued("value").alias("wanted")
        held: Select[Any] = select(literal_column("value")).select_from(
            func.json_each(TASKS.c.tag_keys)
        )
        return ~exists().where(wanted.c.value.not_in(held.scalar_subquery()))
    # Containment on the GIN-indexed column.
    return TASKS.c.tag_keys.contains(bindparam("tags", type_=ARRAY(Text())))


def _escape_like(text: str) -> str:
    """`text` matched literally inside a LIKE pattern."""
    for char in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(char, LIKE_ESCAPE + char)
    return text

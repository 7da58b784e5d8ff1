"""Every SQL statement about tasks: one statement per operation, atomic in the database.

Functions take the request's connection (autocommit) and return rows as mappings; they
know nothing of HTTP or JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    not_,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import RowMapping

from .models import Task, UTCDateTime

TASKS = cast(Table, Task.__table__)
COLUMNS = tuple(TASKS.c)


# Each list sort: the key it orders by (ties broken by id), and whether descending.
# Each has an index on (user_id, key, id), so a page is a range scan of that index.
SORT_KEYS: dict[str, tuple[ColumnElement[Any], bool]] = {
    "-created_at": (TASKS.c.created_at, True),
    "created_at": (TASKS.c.created_at, False),
    "-updated_at": (TASKS.c.updated_at, True),
    "updated_at": (TASKS.c.updated_at, False),
    "title": (func.lower(TASKS.c.title), False),
    "-title": (func.lower(TASKS.c.title), True),
}


def list_tasks(
    conn: Connection,
    *,
    user_id: str,
    sort: str = "-created_at",
    completed: bool | None = None,
    q: str | None = None,
    limit: int,
    after: tuple[Any, uuid.UUID] | None = None,
) -> Sequence[RowMapping]:
    """One page of the user's tasks in `sort` order, starting past the row `after`.

    `after` is the (`sort_key`, `id`) of the previous page's last row; every row comes
    with its `sort_key`. Keyset paging: a page costs the same at any depth, and rows
    added or removed meanwhile never shift the others.
    """
    key, descending = SORT_KEYS[sort]
    stmt = select(*COLUMNS, key.label("sort_key")).where(TASKS.c.user_id == user_id)
    if completed is not None:
        stmt = stmt.where(TASKS.c.completed == completed)
    if q is not None:
        stmt = stmt.where(
            or_(
                TASKS.c.title.icontains(q, autoescape=True),
                TASKS.c.description.icontains(q, autoescape=True),
            )
        )
    if after is not None:
        position = tuple_(key, TASKS.c.id)
        bound = tuple_(
            bindparam(None, after[0], type_=key.type),
            bindparam(None, after[1], type_=TASKS.c.id.type),
        )
        stmt = stmt.where(position < bound if descending else position > bound)
    order = (key.desc(), TASKS.c.id.desc()) if descending else (key.asc(), TASKS.c.id.asc())
    return conn.execute(stmt.order_by(*order).limit(limit)).mappings().all()


def get_task(conn: Connection, *, user_id: str, task_id: uuid.UUID) -> RowMapping | None:
    return conn.execute(select(*COLUMNS).where(*_owned(user_id, task_id))).mappings().first()


def create_task(
    conn: Connection,
    *,
    user_id: str,
    title: str,
    description: str | None = None,
    completed: bool = False,
) -> RowMapping:
    now = _now()
    stmt = (
        insert(TASKS)
        .values(
            id=uuid.uuid4(),
            user_id=user_id,
            title=title,
            description=description,
            completed=completed,
            completed_at=now if completed else None,
            created_at=now,
            updated_at=now,
            version=1,
        )
        .returning(*COLUMNS)
    )
    return conn.execute(stmt).mappings().one()


def update_task(
    conn: Connection, *, user_id: str, task_id: uuid.UUID, changes: Mapping[str, Any]
) -> RowMapping | None:
    """Apply `changes` (title, description, completed); None if the user has no such task.

    `version` and `updated_at` move only when a value really differs, so repeating
    an update changes nothing.
    """
    now = _timestamp(_now())
    changed = or_(*(TASKS.c[name].is_distinct_from(value) for name, value in changes.items()))
    values: dict[str, Any] = dict(changes)
    if "completed" in changes:
        values["completed_at"] = (
            func.coalesce(TASKS.c.completed_at, now) if changes["completed"] else None
        )
    values["updated_at"] = case((changed, now), else_=TASKS.c.updated_at)
    values["version"] = TASKS.c.version + case((changed, 1), else_=0)
    stmt = update(TASKS).where(*_owned(user_id, task_id)).values(values).returning(*COLUMNS)
    return conn.execute(stmt).mappings().first()


def set_completed(
    conn: Connection, *, user_id: str, task_id: uuid.UUID, completed: bool | None
) -> RowMapping | None:
    """Set `completed`, or flip it when `completed` is None; None if no such task.

    The flip reads the current value inside the UPDATE, so concurrent toggles
    each apply: N of them flip the task N times.
    """
    if completed is not None:
        return update_task(conn, user_id=user_id, task_id=task_id, changes={"completed": completed})
    now = _timestamp(_now())
    stmt = (
        update(TASKS)
        .where(*_owned(user_id, task_id))
        .values(
            completed=not_(TASKS.c.completed),
            completed_at=case((TASKS.c.completed, null()), else_=now),
            updated_at=now,
            version=TASKS.c.version + 1,
        )
        .returning(*COLUMNS)
    )
    return conn.execute(stmt).mappings().first()


def delete_task(conn: Connection, *, user_id: str, task_id: uuid.UUID) -> bool:
    """Delete the task; False if the user has no such task."""
    result = conn.execute(delete(TASKS).where(*_owned(user_id, task_id)))
    return result.rowcount == 1


def _owned(user_id: str, task_id: uuid.UUID) -> tuple[ColumnElement[bool], ...]:
    # Another user's task is indistinguishable from a missing one.
    return TASKS.c.id == task_id, TASKS.c.user_id == user_id


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(value: datetime) -> ColumnElement[datetime]:
    # Typed, so SQLite stores it in the same form as the column's own values.
    return literal(value, UTCDateTime())

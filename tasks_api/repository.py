"""Every SQL statement about tasks: one statement per operation, atomic in the database.

Functions take the request's connection (autocommit) and return rows as mappings; they
know nothing of HTTP or JSON.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
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
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping

from .models import IdempotencyKey, Task, UTCDateTime

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


def new_task(
    *, user_id: str, title: str, description: str | None = None, completed: bool = False
) -> dict[str, Any]:
    """Every column of a task about to be created: the id and clock are the app's."""
    now = _now()
    return {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "title": title,
        "description": description,
        "completed": completed,
        "completed_at": now if completed else None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def create_task(conn: Connection, task: Mapping[str, Any]) -> RowMapping:
    return conn.execute(insert(TASKS).values(task).returning(*COLUMNS)).mappings().one()


def update_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    versions: Collection[int] | None = None,
) -> RowMapping | None:
    """Apply `changes` (title, description, completed); None if the user has no such task,
    or, when `versions` is given (If-Match), its version is none of them.

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
    stmt = (
        update(TASKS).where(*_owned(user_id, task_id, versions)).values(values).returning(*COLUMNS)
    )
    return conn.execute(stmt).mappings().first()


def set_completed(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    completed: bool | None,
    versions: Collection[int] | None = None,
) -> RowMapping | None:
    """Set `completed`, or flip it when `completed` is None; None if no such task.

    The flip reads the current value inside the UPDATE, so concurrent toggles
    each apply: N of them flip the task N times.
    """
    if completed is not None:
        return update_task(
            conn,
            user_id=user_id,
            task_id=task_id,
            changes={"completed": completed},
            versions=versions,
        )
    now = _timestamp(_now())
    stmt = (
        update(TASKS)
        .where(*_owned(user_id, task_id, versions))
        .values(
            completed=not_(TASKS.c.completed),
            completed_at=case((TASKS.c.completed, null()), else_=now),
            updated_at=now,
            version=TASKS.c.version + 1,
        )
        .returning(*COLUMNS)
    )
    return conn.execute(stmt).mappings().first()


def delete_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    versions: Collection[int] | None = None,
) -> bool:
    """Delete the task; False if the user has no such task (at one of `versions`)."""
    result = conn.execute(delete(TASKS).where(*_owned(user_id, task_id, versions)))
    return result.rowcount == 1


def task_version(conn: Connection, *, user_id: str, task_id: uuid.UUID) -> int | None:
    """The task's version; asked only after a conditional write matched nothing."""
    stmt = select(TASKS.c.version).where(*_owned(user_id, task_id))
    version: int | None = conn.execute(stmt).scalar()
    return version


def _owned(
    user_id: str, task_id: uuid.UUID, versions: Collection[int] | None = None
) -> tuple[ColumnElement[bool], ...]:
    # Another user's task is indistinguishable from a missing one. With `versions`, the
    # If-Match check happens in the same statement as the write: no lost update.
    owned = (TASKS.c.id == task_id, TASKS.c.user_id == user_id)
    return owned if versions is None else (*owned, TASKS.c.version.in_(versions))


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(value: datetime) -> ColumnElement[datetime]:
    # Typed, so SQLite stores it in the same form as the column's own values.
    return literal(value, UTCDateTime())


# --- idempotency keys ------------------------------------------------------------------

KEYS = cast(Table, IdempotencyKey.__table__)
KEY_LIFETIME = timedelta(hours=24)
# A claim whose request never finished (its process died) can be taken over after this.
CLAIM_TIMEOUT = timedelta(seconds=60)


def claim_key(conn: Connection, *, user_id: str, key: str, request_hash: str) -> bool:
    """Claim `key` for a create about to run; False if a live record holds it already.

    One statement: insert the claim, or take over the record when it has expired or its
    request was abandoned in flight.
    """
    now = _now()
    dialect_insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(KEYS).values(
        user_id=user_id, key=key, request_hash=request_hash, created_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[KEYS.c.user_id, KEYS.c.key],
        set_={
            "request_hash": stmt.excluded.request_hash,
            "created_at": stmt.excluded.created_at,
            "status": None,
            "task_id": None,
            "response": None,
        },
        where=or_(
            KEYS.c.created_at < _timestamp(now - KEY_LIFETIME),
            and_(KEYS.c.status.is_(None), KEYS.c.created_at < _timestamp(now - CLAIM_TIMEOUT)),
        ),
    )
    return conn.execute(stmt.returning(KEYS.c.key)).first() is not None


def key_record(conn: Connection, *, user_id: str, key: str) -> RowMapping | None:
    stmt = select(KEYS).where(KEYS.c.user_id == user_id, KEYS.c.key == key)
    return conn.execute(stmt).mappings().first()


def create_task_for_key(
    conn: Connection, task: Mapping[str, Any], *, key: str, status: int, response: str
) -> None:
    """Create `task` and record the response under its claimed key, atomically."""
    record = (
        update(KEYS)
        .where(KEYS.c.user_id == task["user_id"], KEYS.c.key == key)
        .values(status=status, task_id=task["id"], response=response)
    )
    if conn.dialect.name == "postgresql":
        # One statement, one round trip: a data-modifying CTE runs to completion.
        conn.execute(record.add_cte(insert(TASKS).values(task).cte("created")))
        return
    with _sqlite_transaction(conn):
        conn.execute(insert(TASKS).values(task))
        conn.execute(record)


def release_key(conn: Connection, *, user_id: str, key: str) -> None:
    """Drop an in-flight claim whose create failed, so a retry can run."""
    conn.execute(
        delete(KEYS).where(KEYS.c.user_id == user_id, KEYS.c.key == key, KEYS.c.status.is_(None))
    )


def purge_keys(conn: Connection) -> int:
    """Delete the keys older than their 24 hours; return how many."""
    result = conn.execute(delete(KEYS).where(KEYS.c.created_at < _timestamp(_now() - KEY_LIFETIME)))
    return result.rowcount


@contextlib.contextmanager
def _sqlite_transaction(conn: Connection) -> Iterator[None]:
    # The engine autocommits each statement; SQLite takes an explicit BEGIN as is.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")

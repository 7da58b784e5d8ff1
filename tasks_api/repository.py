"""Every SQL statement about tasks: one statement per operation, atomic in the database.

Statements are built once (a few variants per operation, cached) and run as `db.Query`s
with their values as parameters. Functions take the request's connection (autocommit)
and return rows as mappings; they know nothing of HTTP or JSON.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .db import Query
from .models import (
    PRIORITY_RANK,
    PRIORITY_RANK_REVERSED,
    IdempotencyKey,
    SyncPosition,
    Task,
    Tombstone,
    UTCDateTime,
    due_key,
)

TASKS = cast(Table, Task.__table__)
POSITIONS = cast(Table, SyncPosition.__table__)
TOMBSTONES = cast(Table, Tombstone.__table__)
# What a task row reads as: every column but the case-folded tags, which only the
# `tag` filter uses, and the change position, which only the sync feed does.
COLUMNS = tuple(c for c in TASKS.c if c.key not in ("tag_keys", "change_position"))
Row = Mapping[str, Any]
T = TypeVar("T")

# Each list sort: the keys it orders by (then by id), all in one direction, and whether
# that is descending. Each has an index on (user_id, *keys, id), so a page is a range
# scan of that index. The four sorts whose ties go newest first order by a key that
# runs backwards where needed (a negated rank or day number), then created_at.
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
}
LIKE_ESCAPE = "/"


@dataclass(frozen=True)
class Filters:
    """What a list is narrowed to; None (or empty) means not narrowed by that."""

    statuses: Collection[str] | None = None  # any of these
    priorities: Collection[str] | None = None  # any of these
    tags: Collection[str] = ()  # every one of these, ignoring case
    due_after: date | None = None  # inclusive; undated tasks are left out
    due_before: date | None = None
    q: str | None = None


def list_tasks(
    conn: Connection,
    *,
    user_id: str,
    sort: str = "-created_at",
    filters: Filters = Filters(),
    limit: int,
    after: tuple[Any, ...] | None = None,
) -> Sequence[Row]:
    """One page of the user's tasks in `sort` order, starting past the row `after`.

    `after` is the previous page's last row as (`sort_key`, [`created_at`,] `id`): the
    values of the sort's keys, then its id; every row comes with its `sort_key`. Keyset
    paging: a page costs the same at any depth, and rows added or removed meanwhile
    never shift the others.
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


# 2 dialects x 10 sorts x 2^6 variants: at most 1,280 statements, built when first asked for.
@functools.cache
def list_query(dialect: str, sort: str, variant: ListVariant) -> Query:
    """The list statement for one dialect, sort and set of filters."""
    keys, descending = SORT_KEYS[sort]
    stmt = select(*COLUMNS, keys[0].label("sort_key")).where(TASKS.c.user_id == bindparam("owner"))
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


def get_task(conn: Connection, *, user_id: str, task_id: uuid.UUID) -> Row | None:
    return _GET.row(conn, owner=user_id, task_id=task_id)


def tag_key(tag: str) -> str:
    """What two tags that differ only in case have in common."""
    return tag.casefold()


def new_task(
    *,
    user_id: str,
    title: str,
    description: str | None = None,
    completed: bool | None = None,
    status: str | None = None,
    priority: str = "medium",
    due_date: date | None = None,
    tags: Sequence[str] = (),
) -> dict[str, Any]:
    """Every column of a task about to be created: the id and clock are the app's.

    `status` and `completed` must agree when both are given (the schema checks).
    """
    if status is None:
        status = "done" if completed else "todo"
    now = _now()
    done = status == "done"
    return {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "title": title,
        "description": description,
        "completed": done,
        "status": status,
        "priority": priority,
        "due_date": due_date,
        "tags": list(tags),
        "tag_keys": [tag_key(tag) for tag in tags],
        "completed_at": now if done else None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def create_task(conn: Connection, task: Row) -> Row:
    """Insert `task` (from `new_task`) and return it: every value in it is already the
    stored one, so there is nothing to read back."""
    if conn.dialect.name == "postgresql":
        _INSERT.rowcount(conn, **task)
    else:
        _sqlite_write(
            conn, task["user_id"], lambda p: _INSERT_SQLITE.rowcount(conn, **task, position=p)
        )
    return task


def update_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    versions: Collection[int] | None = None,
) -> Row | None:
    """Apply `changes` (title, description, status, completed, priority, due_date,
    tags); None if the user has no such task, or, when `versions` is given (If-Match),
    its version is none of them.

    `status` and `completed` must agree when both are given (the schema checks):
    `completed: true` means `done`; `completed: false` turns `done` into `todo` and
    leaves the other states. `version` and `updated_at` move only when a value really
    differs, so repeating an update changes nothing.
    """
    values = dict(changes)
    if "status" in values:
        values["completed"] = values["status"] == "done"
    if "tags" in values:
        values["tag_keys"] = [tag_key(tag) for tag in values["tags"]]
    query = _update_query(conn.dialect.name, tuple(sorted(values)), _arity(versions))
    params = {**values, **_if_match(versions), "owner": user_id, "task_id": task_id, "now": _now()}
    return _write(conn, user_id, lambda p: query.row(conn, **params, position=p))


def set_completed(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    completed: bool | None,
    versions: Collection[int] | None = None,
) -> Row | None:
    """Set `completed`, or flip it when `completed` is None; None if no such task.

    The flip reads the current state inside the UPDATE, so concurrent toggles each
    apply: N of them flip the task N times. A task `in_progress` flips to `done`.
    """
    if completed is not None:
        return update_task(
            conn,
            user_id=user_id,
            task_id=task_id,
            changes={"completed": completed},
            versions=versions,
        )
    query = _toggle_query(conn.dialect.name, _arity(versions))
    params = {**_if_match(versions), "owner": user_id, "task_id": task_id, "now": _now()}
    return _write(conn, user_id, lambda p: query.row(conn, **params, position=p))


def delete_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    versions: Collection[int] | None = None,
) -> bool:
    """Delete the task, leaving its tombstone; False if the user has no such task (at
    one of `versions`)."""
    query = _delete_query(conn.dialect.name, _arity(versions))
    params = {**_if_match(versions), "owner": user_id, "task_id": task_id, "now": _now()}
    if conn.dialect.name == "postgresql":
        return query.rowcount(conn, **params) == 1

    def delete_then_bury(position: int) -> bool:
        gone = query.row(conn, **params)
        if gone is not None:
            _BURY.rowcount(conn, **params, id=gone["id"], position=position)
        return gone is not None

    return _sqlite_write(conn, user_id, delete_then_bury)


def task_version(conn: Connection, *, user_id: str, task_id: uuid.UUID) -> int | None:
    """The task's version; asked only after a conditional write matched nothing."""
    row = _VERSION.row(conn, owner=user_id, task_id=task_id)
    return None if row is None else int(row["version"])


def _owned(if_match: int | None = None) -> tuple[ColumnElement[bool], ...]:
    # Another user's task is indistinguishable from a missing one. With If-Match, the
    # version check happens in the same statement as the write: no lost update.
    owned = (TASKS.c.id == bindparam("task_id"), TASKS.c.user_id == bindparam("owner"))
    if if_match is None:
        return owned
    if if_match == 0:  # only weak or foreign tags: no version matches (they start at 1)
        # Not false(): SQLAlchemy would fold the whole WHERE into it, naming no user.
        return (*owned, TASKS.c.version < literal_column("1"))
    return (*owned, TASKS.c.version.in_([bindparam(f"if_match_{i}") for i in range(if_match)]))


def _arity(versions: Collection[int] | None) -> int | None:
    return None if versions is None else len(versions)


def _if_match(versions: Collection[int] | None) -> dict[str, int]:
    return {f"if_match_{i}": version for i, version in enumerate(versions or ())}


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(name: str) -> ColumnElement[datetime]:
    # Typed, so SQLite stores it in the same form as the column's own values.
    return bindparam(name, type_=UTCDateTime())


# --- change positions (the sync feed; tasks_api/sync.py argues the design) -----------


def _advance(dialect: str, owner: str = "owner") -> Any:
    """Advance the user's change counter (creating it at 1); returns user_id, position.

    On PostgreSQL it is a CTE of the write itself: the counter's row lock, held to the
    commit, makes one user's writes commit in the order of their positions.
    """
    dialect_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    stmt = dialect_insert(POSITIONS).values(
        user_id=bindparam(owner, type_=POSITIONS.c.user_id.type), position=literal_column("1")
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[POSITIONS.c.user_id], set_={"position": POSITIONS.c.position + 1}
    )
    return stmt.returning(POSITIONS.c.user_id, POSITIONS.c.position)


_ADVANCED = _advance("postgresql").cte("advanced")
_ADVANCED_FOR_CREATE = _advance("postgresql", "user_id").cte("advanced")
_ADVANCE_SQLITE = Query(_advance("sqlite"))


def _position(dialect: str) -> tuple[ColumnElement[int], ColumnElement[bool] | None]:
    """The write's new position, and on PostgreSQL the join that reads it from the CTE.

    The join, not a scalar subquery: the counter is then advanced before the task row
    is locked for the write, the same order for every write, so two writes of one user
    cannot deadlock.
    """
    if dialect == "postgresql":
        return _ADVANCED.c.position, TASKS.c.user_id == _ADVANCED.c.user_id
    return bindparam("position", type_=TASKS.c.change_position.type), None


def _write(conn: Connection, user_id: str, write: Callable[[int | None], T]) -> T:
    """Run `write`: on PostgreSQL as the one statement it is; on SQLite after advancing
    the counter, in one transaction."""
    if conn.dialect.name == "postgresql":
        return write(None)
    return _sqlite_write(conn, user_id, write)


def _sqlite_write(conn: Connection, user_id: str, write: Callable[[int], T]) -> T:
    # The engine autocommits; SQLite takes BEGIN IMMEDIATE as is and holds its one write
    # lock from here, so positions are taken and committed in the same order.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        advanced = _ADVANCE_SQLITE.row(conn, owner=user_id)
        assert advanced is not None  # an upsert always returns its row
        result = write(int(advanced["position"]))
    except BaseException:
        conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")
    return result


_GET = Query(select(*COLUMNS).where(*_owned()))
_VERSION = Query(select(TASKS.c.version).where(*_owned()))


def _insert_statement(dialect: str) -> Any:
    values: dict[str, Any] = {c.key: bindparam(c.key, type_=c.type) for c in TASKS.c}
    if dialect == "postgresql":
        values["change_position"] = select(_ADVANCED_FOR_CREATE.c.position).scalar_subquery()
    else:
        values["change_position"] = bindparam("position", type_=TASKS.c.change_position.type)
    return insert(TASKS).values(values)


_INSERT = Query(_insert_statement("postgresql"))
_INSERT_SQLITE = Query(_insert_statement("sqlite"))


# Variants by the fields changed and the number of If-Match versions; bounded, since
# clients choose the latter.
@functools.lru_cache(maxsize=512)
def _update_query(dialect: str, fields: tuple[str, ...], if_match: int | None) -> Query:
    now = _timestamp("now")
    position, join = _position(dialect)
    new = {name: bindparam(name, type_=TASKS.c[name].type) for name in fields}
    values: dict[str, Any] = dict(new)
    if "completed" in new and "status" not in new:
        # completed: false leaves a task that is not done as it is.
        values["status"] = case(
            (new["completed"], literal("done")),
            (TASKS.c.status == literal("done"), literal("todo")),
            else_=TASKS.c.status,
        )
    changed = or_(*(TASKS.c[name].is_distinct_from(value) for name, value in values.items()))
    if "completed" in new:
        values["completed_at"] = case(
            (new["completed"], func.coalesce(TASKS.c.completed_at, now)), else_=null()
        )
    values["updated_at"] = case((changed, now), else_=TASKS.c.updated_at)
    values["version"] = TASKS.c.version + case((changed, 1), else_=0)
    # A write that changes nothing keeps its position, as it keeps its version.
    values["change_position"] = case((changed, position), else_=TASKS.c.change_position)
    stmt = update(TASKS).where(*_owned(if_match)).values(values).returning(*COLUMNS)
    return Query(stmt if join is None else stmt.where(join))


@functools.lru_cache(maxsize=32)
def _toggle_query(dialect: str, if_match: int | None) -> Query:
    now = _timestamp("now")
    position, join = _position(dialect)
    stmt = (
        update(TASKS)
        .where(*_owned(if_match))
        .values(
            completed=not_(TASKS.c.completed),
            status=case((TASKS.c.completed, literal("todo")), else_=literal("done")),
            completed_at=case((TASKS.c.completed, null()), else_=now),
            updated_at=now,
            version=TASKS.c.version + 1,
            change_position=position,
        )
        .returning(*COLUMNS)
    )
    return Query(stmt if join is None else stmt.where(join))


@functools.lru_cache(maxsize=32)
def _delete_query(dialect: str, if_match: int | None) -> Query:
    """PostgreSQL: the delete and its tombstone in one statement. SQLite: the delete,
    returning the id that `_BURY` then records in the same transaction."""
    if dialect != "postgresql":
        return Query(delete(TASKS).where(*_owned(if_match)).returning(TASKS.c.id))
    position, join = _position(dialect)
    assert join is not None
    gone = (
        delete(TASKS)
        .where(*_owned(if_match), join)
        .returning(TASKS.c.user_id, TASKS.c.id, position.label("position"))
        .cte("gone")
    )
    return Query(_bury(select(gone.c.user_id, gone.c.id, gone.c.position, _timestamp("now"))))


def _bury(rows: Select[Any]) -> Any:
    return insert(TOMBSTONES).from_select(["user_id", "id", "position", "deleted_at"], rows)


_BURY = Query(
    _bury(
        select(
            bindparam("owner", type_=TOMBSTONES.c.user_id.type),
            bindparam("id", type_=TOMBSTONES.c.id.type),
            bindparam("position", type_=TOMBSTONES.c.position.type),
            _timestamp("now"),
        )
    )
)


# --- the sync feed -----------------------------------------------------------------------

# Above every position: the tombstone bound of a first sync, which reads tasks only.
NO_TOMBSTONES = 2**62
TOMBSTONE_RETENTION = timedelta(days=30)
# Tombstones outlive the tokens that may need them by this much: a delete's clock is read
# just before its statement, and instances' clocks differ by a little.
PURGE_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class ChangesPage:
    """What changed after a position, in position order (at most `limit` entries)."""

    changed: Sequence[Row]  # tasks, each with its `position`
    deleted: Sequence[Row]  # id, position
    horizon: int  # the user's counter when read: every position up to it is in the read


def changes(
    conn: Connection, *, user_id: str, after: int, deleted_after: int, limit: int
) -> ChangesPage:
    """The user's tasks changed after position `after` and tombstones after
    `deleted_after`, the first `limit` entries of the two in position order. One
    statement, so one snapshot: each branch is a range scan of its index."""
    changed: list[Row] = []
    deleted: list[Row] = []
    horizon = 0  # a user who never wrote has no counter, and nothing to read
    for row in _CHANGES.rows(
        conn, owner=user_id, after=after, deleted_after=deleted_after, limit=limit
    ):
        horizon = int(row["horizon"])
        if row["position"] is not None:  # the counter's row alone: nothing after
            (deleted if row["deleted"] else changed).append(row)
    return ChangesPage(changed, deleted, horizon)


def _changes_statement() -> Any:
    owner = bindparam("owner", type_=TASKS.c.user_id.type)
    limit: Any = bindparam("limit")
    position = TASKS.c.change_position
    changed = (
        select(*COLUMNS, position.label("position"), false().label("deleted"))
        .where(TASKS.c.user_id == owner, position > bindparam("after", type_=position.type))
        .order_by(position)
        .limit(limit)
        .subquery("changed")
    )
    buried = (
        select(
            *(
                TOMBSTONES.c[c.key]
                if c.key in ("id", "user_id")
                else null().cast(c.type).label(c.key)
                for c in COLUMNS
            ),
            TOMBSTONES.c.position,
            true().label("deleted"),
        )
        .where(
            TOMBSTONES.c.user_id == owner,
            TOMBSTONES.c.position > bindparam("deleted_after", type_=position.type),
        )
        .order_by(TOMBSTONES.c.position)
        .limit(limit)
        .subquery("buried")
    )
    page = union_all(select(changed), select(buried)).subquery("page")
    return (
        select(POSITIONS.c.position.label("horizon"), *page.c)
        .select_from(POSITIONS.outerjoin(page, true()))
        .where(POSITIONS.c.user_id == owner)
        .order_by(page.c.position)
        .limit(limit)
    )


_CHANGES = Query(_changes_statement())


def purge_tombstones(conn: Connection, *, now: datetime | None = None) -> int:
    """Delete the tombstones past their retention (and the margin); return how many.

    Safe while clients sync: a token old enough to need a purged tombstone is refused
    (410) before it reads anything.
    """
    expired = (now or _now()) - TOMBSTONE_RETENTION - PURGE_MARGIN
    return _PURGE_TOMBSTONES.rowcount(conn, expired_before=expired)


_PURGE_TOMBSTONES = Query(
    delete(TOMBSTONES).where(TOMBSTONES.c.deleted_at < _timestamp("expired_before"))
)

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
    claimed = _claim_query(conn.dialect.name).row(
        conn,
        user_id=user_id,
        key=key,
        request_hash=request_hash,
        now=now,
        expired_before=now - KEY_LIFETIME,
        abandoned_before=now - CLAIM_TIMEOUT,
    )
    return claimed is not None


@functools.cache
def _claim_query(dialect: str) -> Query:
    dialect_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    stmt = dialect_insert(KEYS).values(
        user_id=bindparam("user_id"),
        key=bindparam("key"),
        request_hash=bindparam("request_hash"),
        created_at=_timestamp("now"),
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
            KEYS.c.created_at < _timestamp("expired_before"),
            and_(KEYS.c.status.is_(None), KEYS.c.created_at < _timestamp("abandoned_before")),
        ),
    )
    return Query(stmt.returning(KEYS.c.key))


def key_record(conn: Connection, *, user_id: str, key: str) -> Row | None:
    return _KEY_RECORD.row(conn, owner=user_id, key_name=key)


def create_task_for_key(
    conn: Connection, task: Row, *, key: str, status: int, response: str
) -> None:
    """Create `task` and record the response under its claimed key, atomically."""
    params = {
        **task,
        "owner": task["user_id"],
        "key_name": key,
        "response_status": status,  # not "status": that is the task's
        "response": response,
    }
    if conn.dialect.name == "postgresql":
        # One statement, one round trip: a data-modifying CTE runs to completion.
        _CREATE_FOR_KEY.rowcount(conn, **params)
        return

    def create_and_record(position: int) -> None:
        _INSERT_SQLITE.rowcount(conn, **task, position=position)
        _RECORD.rowcount(conn, **params)

    _sqlite_write(conn, task["user_id"], create_and_record)


def release_key(conn: Connection, *, user_id: str, key: str) -> None:
    """Drop an in-flight claim whose create failed, so a retry can run."""
    _RELEASE.rowcount(conn, owner=user_id, key_name=key)


def purge_keys(conn: Connection) -> int:
    """Delete the keys older than their 24 hours; return how many."""
    return _PURGE.rowcount(conn, expired_before=_now() - KEY_LIFETIME)


# Not named after the columns: SQLAlchemy keeps those names for the values.
_KEY = (KEYS.c.user_id == bindparam("owner"), KEYS.c.key == bindparam("key_name"))
_KEY_RECORD = Query(select(KEYS).where(*_KEY))
_RECORD_STATEMENT = (
    update(KEYS)
    .where(*_KEY)
    .values(
        status=bindparam("response_status"),
        task_id=bindparam("id", type_=TASKS.c.id.type),
        response=bindparam("response"),
    )
)
_RECORD = Query(_RECORD_STATEMENT)
_CREATE_FOR_KEY = Query(_RECORD_STATEMENT.add_cte(_INSERT.statement.cte("created")))
_RELEASE = Query(delete(KEYS).where(*_KEY, KEYS.c.status.is_(None)))
_PURGE = Query(delete(KEYS).where(KEYS.c.created_at < _timestamp("expired_before")))

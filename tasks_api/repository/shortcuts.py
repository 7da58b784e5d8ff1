"""The two writes that read no other row: one statement, no lock first
(tasks_api/repository/writes.py: `advanced`). A PUT of plain fields changes its task and
nothing else; a create into the inbox appends, which needs no neighbour. They are the
most frequent writes, and each costs about half of the general protocol (changing.py and
creating.py take them when they can).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import (
    Connection,
    FromClause,
    bindparam,
    case,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)

from ..db import Query, pipeline
from ..models import POSITIONS, TASKS
from ..positions import position_nth
from .tasks import COLUMNS, MAX_TASKS, WRITTEN, change_params, none, task_id_param
from .writes import OK, Outcome, advanced, conditional, matches, owner, timestamp

PLAIN = frozenset({"title", "description", "priority", "due_date", "tags", "tag_keys"})
CROWDED = "crowded"  # an inbox create whose appended key is out of range: the general way


def _one_row() -> FromClause:
    return select(literal_column("1").label("one")).subquery("one")


def _current_version() -> Any:
    t = TASKS.alias("t")
    return (
        select(t.c.version)
        .where(t.c.user_id == owner(), t.c.id == task_id_param())
        .scalar_subquery()
    )


def _plain_values(fields: tuple[str, ...], position: Any) -> dict[str, Any]:
    """What a PUT of plain `fields` sets: version and updated_at move only when a value
    really differs, and with them the change position (the write's, `position`)."""
    new = {name: bindparam(name, type_=TASKS.c[name].type) for name in fields}
    changed = or_(*(TASKS.c[name].is_distinct_from(value) for name, value in new.items()))
    return {
        **new,
        "updated_at": case((changed, timestamp("now")), else_=TASKS.c.updated_at),
        "version": TASKS.c.version + case((changed, 1), else_=0),
        "change_position": case((changed, position), else_=TASKS.c.change_position),
    }


@functools.lru_cache(maxsize=512)
def _plain_update(dialect: str, fields: tuple[str, ...], if_match: bool) -> Query:
    """PostgreSQL: the counter advanced, the task updated, and the verdict, in one
    statement. SQLite: the update alone, at the change position `at`."""
    owned = (TASKS.c.user_id == owner(), TASKS.c.id == task_id_param())
    if dialect != "postgresql":
        position = bindparam("at", type_=TASKS.c.change_position.type)
        return Query(
            update(TASKS)
            .where(*owned, matches(TASKS.c.version, if_match))
            .values(_plain_values(fields, position))
            .returning(*COLUMNS)
        )
    counter = advanced(dialect).cte("advanced")
    # The task as the user's last write left it, read under its row lock, taken after the
    # counter's: the statement's snapshot predates that lock, so a task deleted or changed
    # by a write that held it would look present, or stale, there. (SELECT ... FOR UPDATE
    # returns the newest committed row, or none if it was deleted.)
    t = TASKS.alias("t")
    target = (
        select(t.c.id, t.c.version)
        .where(t.c.user_id == owner(), t.c.id == task_id_param(), t.c.user_id == counter.c.user_id)
        .with_for_update(of=t)
        .cte("target")
    )
    changed = (
        update(TASKS)
        .where(*owned, TASKS.c.id == target.c.id, matches(target.c.version, if_match))
        .values(_plain_values(fields, counter.c.position))
        .returning(*COLUMNS)
        .cte("changed")
    )
    verdict = case(
        (changed.c.id.is_not(None), OK), (target.c.id.is_(None), "not_found"), else_="stale"
    )
    found = _one_row().outerjoin(target, true()).outerjoin(changed, true())
    return Query(
        select(
            verdict.label("verdict"), target.c.version.label("old_version"), *changed.c
        ).select_from(found)
    )


_ADVANCED_SQLITE = Query(advanced("sqlite"))
_ADVANCED_CREATE_SQLITE = Query(advanced("sqlite", creates=MAX_TASKS))
_VERSION_SQLITE = Query(select(_current_version().label("version")))


def update_plainly(
    conn: Connection,
    user_id: str,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    versions: Collection[int] | None,
) -> Outcome:
    query = _plain_update(conn.dialect.name, tuple(sorted(values)), conditional(versions))
    params = {**values, **change_params(user_id, task_id, versions)}
    if conn.dialect.name == "postgresql":
        row = query.row(conn, **params)
        assert row is not None  # one row: the verdict
        found = dict(row)
        verdict, version = found.pop("verdict"), found.pop("old_version")
        return _outcome(verdict, version, found)
    conn.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite: one writer at a time
    try:
        counter = _ADVANCED_SQLITE.row(conn, owner=user_id)
        assert counter is not None  # an upsert returns its row
        changed = query.row(conn, **params, at=counter["position"])
        version = _VERSION_SQLITE.row(conn, owner=user_id, task_id=task_id)
    except BaseException:
        conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")
    current = None if version is None else version["version"]
    verdict = OK if changed is not None else "not_found" if current is None else "stale"
    return _outcome(verdict, current, changed)


def _outcome(verdict: str, version: Any, row: Mapping[str, Any] | None) -> Outcome:
    rows = [row] if row is not None and verdict == OK else []
    return Outcome({"verdict": verdict, "old_version": version}, rows)


@functools.cache
def _inbox_create(dialect: str) -> Query:
    """PostgreSQL: the counter advanced (the limit checked in the same upsert) and the
    task inserted, appended (tasks_api/positions.py), and the verdict, in one statement.
    SQLite: the insert alone, at the change position `at`."""
    values: dict[str, Any] = {c.key: bindparam(f"new_{c.key}", type_=c.type) for c in WRITTEN}
    values |= {"list_id": none(TASKS.c.list_id), "parent_id": none(TASKS.c.parent_id)}
    if dialect != "postgresql":
        at = bindparam("at", type_=TASKS.c.change_position.type)
        values |= {"position": position_nth(at), "change_position": at}
        return Query(insert(TASKS).values(values).returning(*COLUMNS))
    counter = advanced(dialect, creates=MAX_TASKS).cte("advanced")
    values |= {
        "position": position_nth(counter.c.position),
        "change_position": counter.c.position,
    }
    created = (
        insert(TASKS)
        .from_select(list(values), select(*values.values()).select_from(counter))
        .returning(*COLUMNS)
        .cte("created")
    )
    me = POSITIONS.alias("me")
    count = select(me.c.tasks).where(me.c.user_id == owner()).scalar_subquery()
    verdict = case(
        (created.c.id.is_not(None), OK), (count >= MAX_TASKS, "task_limit"), else_=CROWDED
    )
    return Query(
        select(verdict.label("verdict"), *created.c).select_from(
            _one_row().outerjoin(created, true())
        )
    )


_TASK_COUNT_SQLITE = Query(select(POSITIONS.c.tasks).where(POSITIONS.c.user_id == owner()))


def create_in_inbox(conn: Connection, task: Mapping[str, Any], *, then: Any) -> Outcome:
    query = _inbox_create(conn.dialect.name)
    params = {f"new_{name}": value for name, value in task.items()}
    params |= {"owner": task["user_id"], "now": task["created_at"]}
    after = [then] if then is not None else []
    if conn.dialect.name == "postgresql":
        rows = (
            pipeline(conn, [(query, params), *after], answer=0)
            if after
            else query.rows(conn, **params)
        )
        found = dict(rows[0])
        verdict = found.pop("verdict")
        return _outcome(verdict, None, found)
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        counter = _ADVANCED_CREATE_SQLITE.row(conn, owner=task["user_id"])
        created = None if counter is None else query.row(conn, **params, at=counter["position"])
        for statement, values in after:
            statement.rowcount(conn, **values)
        count = _TASK_COUNT_SQLITE.row(conn, owner=task["user_id"])
    except BaseException:
        conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")
    if created is not None:
        return _outcome(OK, None, created)
    assert count is not None  # the upsert made the row, or found it
    return _outcome("task_limit" if count["tasks"] >= MAX_TASKS else CROWDED, None, None)

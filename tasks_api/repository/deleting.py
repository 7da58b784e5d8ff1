"""Deleting a task: it and its subtasks go, each leaving a tombstone for the sync feed,
and its list's count of open tasks follows.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection

from sqlalchemy import (
    Connection,
    FromClause,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.sql.dml import UpdateBase

from ..models import LISTS, TASKS, TOMBSTONES
from .tasks import change_params, count_subtasks, found_rows, open_count, task_id_param
from .writes import OK, Outcome, Write, advance, conditional, matches, owner, stage, timestamp


@functools.lru_cache(maxsize=32)
def _delete(if_match: bool) -> Write:
    """Delete the task `task_id` and its subtasks, leaving a tombstone for each."""
    task = task_id_param()
    found = stage(found_rows(), "found")
    f = found.c
    below = case((f.old_parent_id.is_(None), count_subtasks(task)), else_=0)
    opened = case(
        (f.old_parent_id.is_(None), count_subtasks(task, lambda s: s.c.status != "done")), else_=0
    )
    verdict = case(
        (f.old_id.is_(None), "not_found"),
        (~matches(f.old_version, if_match), "stale"),
        else_=OK,
    )
    plan = select(
        verdict.label("verdict"),
        f.base,
        f.old_version,
        f.old_list_id.label("list_id"),
        (open_count(f.old_status) + opened).label("opened"),
        (1 + below).label("entries"),
    ).select_from(found)

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        doomed = and_(
            TASKS.c.user_id == owner(),
            or_(TASKS.c.id == task, TASKS.c.parent_id == task),
        )
        ok = exists(select(plan.c.verdict).where(plan.c.verdict == OK))
        numbered = func.row_number().over(order_by=(TASKS.c.parent_id.is_not(None), TASKS.c.id))
        buried = insert(TOMBSTONES).from_select(
            ["user_id", "id", "position", "deleted_at"],
            select(TASKS.c.user_id, TASKS.c.id, plan.c.base + numbered, timestamp("now")).where(
                doomed, plan.c.verdict == OK
            ),
        )
        deleted = delete(TASKS).where(doomed, ok).returning(TASKS.c.id)
        closed = (
            update(LISTS)
            .where(
                LISTS.c.user_id == owner(),
                LISTS.c.id == plan.c.list_id,
                plan.c.verdict == OK,
                plan.c.opened > 0,
            )
            .values(open_tasks=LISTS.c.open_tasks - plan.c.opened)
        )
        return [
            ("buried", buried),
            ("deleted", deleted),
            ("lists", closed),
            ("counter", advance(plan, tasks=-plan.c.entries)),
        ]

    return Write(plan, steps, returns="deleted")


def delete_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    versions: Collection[int] | None = None,
) -> Outcome:
    """Delete the task and its subtasks, leaving their tombstones. Verdict: "ok",
    not_found or stale."""
    return _delete(conditional(versions)).run(conn, **change_params(user_id, task_id, versions))

"""Creating a task: the columns the app decides (`new_task`), and the write that puts it
last among its new siblings. A create into the inbox tries the shorter way first
(shortcuts.py).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, FromClause, bindparam, case, func, insert, select, update
from sqlalchemy.sql.dml import UpdateBase

from ..models import LISTS, TASKS
from ..positions import position_nth
from .placing import Place, destination, respaced_step, respacing, uuid_param
from .shortcuts import CROWDED, create_in_inbox
from .tasks import COLUMNS, MAX_TASKS, WRITTEN, found_rows, open_count, tag_key
from .writes import OK, Outcome, Write, advance, now, owner, stage


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
    list_id: uuid.UUID | None = None,
    parent_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The columns of a task about to be created that the app decides (the id and the
    clock are the app's; the position, and the list of a subtask, the database's).

    `status` and `completed` must agree when both are given (the schema checks).
    """
    if status is None:
        status = "done" if completed else "todo"
    moment = now()
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
        "list_id": list_id,
        "parent_id": parent_id,
        "completed_at": moment if done else None,
        "created_at": moment,
        "updated_at": moment,
        "version": 1,
    }


@functools.lru_cache(maxsize=8)
def _create(place: Place) -> Write:
    found = stage(found_rows(task=False), "found")
    around = stage(destination(found, place, moving=None), "dest")
    key = position_nth(around.c.base + 1)  # appended: no neighbour to read
    respace = key.is_(None)
    slot, siblings = respacing(around, "last", moving=None, respace=respace)
    verdict = case(
        (around.c.task_count >= MAX_TASKS, "task_limit"),
        else_=func.coalesce(around.c.problem, OK),
    )
    plan = select(
        verdict.label("verdict"),
        around.c.base,
        around.c.to_list.label("list_id"),
        around.c.to_parent.label("parent_id"),
        case((respace, position_nth(slot)), else_=key).label("position"),
        respace.label("respace"),
        slot.label("slot"),
        open_count(bindparam("new_status", type_=TASKS.c.status.type)).label("opened"),
        (1 + siblings).label("entries"),
    ).select_from(around)

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        # Not named after the columns: SQLAlchemy keeps those names for the values.
        values: dict[str, Any] = {c.key: bindparam(f"new_{c.key}", type_=c.type) for c in WRITTEN}
        values |= {
            "list_id": plan.c.list_id,
            "parent_id": plan.c.parent_id,
            "position": plan.c.position,
            "change_position": plan.c.base + 1,
        }
        created = (
            insert(TASKS)
            .from_select(list(values), select(*values.values()).where(plan.c.verdict == OK))
            .returning(*COLUMNS)
        )
        opened = (
            update(LISTS)
            .where(
                LISTS.c.user_id == owner(),
                LISTS.c.id == plan.c.list_id,
                plan.c.verdict == OK,
                plan.c.opened == 1,
            )
            .values(open_tasks=LISTS.c.open_tasks + 1)
        )
        steps: list[tuple[str, UpdateBase]] = [
            ("respaced", respaced_step(plan, task=uuid_param("new_id"), first=plan.c.base + 2)),
            ("created", created),
        ]
        if place.list_given or place.parent_given:  # else it is in the inbox
            steps.append(("lists", opened))
        return [*steps, ("counter", advance(plan, tasks=1))]

    return Write(plan, steps, returns="created")


def create_task(conn: Connection, task: Mapping[str, Any], *, then: Any = None) -> Outcome:
    """Insert `task` (from `new_task`) last among its new siblings. The outcome's verdict
    says why not, if not: task_limit, list_missing, parent_missing, parent_nested,
    list_mismatch or subtask_limit. `then` runs after, in the same transaction."""
    place = Place(
        list_given=task["list_id"] is not None, parent_given=task["parent_id"] is not None
    )
    if place == Place():  # into the inbox: it reads no other row
        outcome = create_in_inbox(conn, task, then=then)
        if outcome.verdict != CROWDED:
            return outcome
    params = {
        **{f"new_{name}": value for name, value in task.items()},
        "owner": task["user_id"],
        "to_list": task["list_id"],
        "to_parent": task["parent_id"],
        "now": task["created_at"],
    }
    return _create(place).run(conn, then=then, **params)

"""Changing a task: a PUT of its fields, its completion, a move. One plan (`change_plan`,
which bulk.py shares) and the steps that carry a change to the task's row, its subtasks,
its parent, its group and its lists. A PUT of plain fields takes the shorter way
(shortcuts.py).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql.dml import UpdateBase

from ..models import LISTS, TASKS
from ..positions import position_nth
from .placing import Order, Place, destination, keyed, neighbours, respaced_step, respacing
from .shortcuts import PLAIN, update_plainly
from .tasks import (
    COLUMNS,
    change_params,
    count_subtasks,
    found_rows,
    open_count,
    tag_key,
    task_id_param,
)
from .writes import (
    OK,
    Outcome,
    Write,
    advance,
    conditional,
    matches,
    only_if,
    owner,
    stage,
    timestamp,
)

# Spelled in the SQL: a bound value in a SET clause is named after its column, and a
# request's own `status` parameter would stand in for it.
_DONE, _TODO = (
    literal_column("'done'", TASKS.c.status.type),
    literal_column("'todo'", TASKS.c.status.type),
)


@dataclass(frozen=True)
class Many:
    """A plan of several tasks (tasks_api/repository/bulk.py): `asked(id)` says whether
    a task id is one of the request's."""

    asked: Callable[[Any], ColumnElement[bool]]

    def others(self, s: FromClause) -> ColumnElement[bool]:
        """The task row `s` is not one of the request's."""
        return ~self.asked(s.c.id)


def change_plan(
    found: CTE,
    *,
    task: Any | None,
    fields: tuple[str, ...],
    toggle: bool,
    version_ok: Callable[[Any], ColumnElement[bool]],
    place: Place,
    many: Many | None = None,
) -> tuple[Select[Any], bool, bool]:
    """The plan of a change of the task `task` (a row of `found`): `fields` set from
    parameters of their names, `toggle` flips its completion, `place` says where it goes;
    and whether its status may change and whether it may move. With `many`, `found` has a
    row per task, each with its own `base`, and a task of the request is left to its own
    row: no other row's cascade counts or changes it. `task` None: each row's own id."""

    def moving(stage: FromClause) -> Any:  # the task, as the stage reading it names it
        return stage.c.old_id if task is None else task

    # Only what the variant can need: a write that names no list, parent or place keeps
    # the task where it is; one that cannot change its status cascades nothing.
    moves = place.list_given or place.parent_given or place.order != "keep"
    status_may_change = toggle or "status" in fields or "completed" in fields
    if moves:
        dest = stage(destination(found, place, moving=moving(found)), "dest")
        placed = stage(neighbours(dest, place.order, moving=moving(dest)), "placed")
        around, respace = keyed(placed, placed.c.old_position, place.order)
        a = around.c
        slot, siblings = respacing(around, place.order, moving=moving(around), respace=respace)
        position: Any = case((respace, position_nth(slot)), else_=a.key)
        to_list, to_parent = a.to_list, a.to_parent
        p_status: Any = a.p_status
        problem: Any = a.place_problem
        if many is not None:  # each appends: out of range, it is refused, not respaced
            problem = func.coalesce(problem, case((respace, "crowded")))
            respace, slot, siblings = false(), literal(0), literal(0)
            position = a.key
    else:
        around, a = found, found.c
        respace, slot, siblings = false(), literal(0), literal(0)
        position, to_list, to_parent = a.old_position, a.old_list_id, a.old_parent_id
        p_status = _parent_status(a.old_parent_id) if status_may_change else null()
        problem = null()

    def new(name: str) -> Any:
        return bindparam(name, type_=TASKS.c[name].type) if name in fields else a[f"old_{name}"]

    if toggle:
        status: Any = case((a.old_completed, literal("todo")), else_=literal("done"))
    elif "status" in fields:
        status = new("status")
    elif "completed" in fields:  # completed: false leaves a task that is not done as it is
        status = case(
            (new("completed"), literal("done")),
            (a.old_status == literal("done"), literal("todo")),
            else_=a.old_status,
        )
    else:
        status = a.old_status
    values: dict[str, Any] = {
        name: new(name) for name in ("title", "description", "priority", "due_date", "tags")
    }
    values |= {"status": status, "list_id": to_list, "parent_id": to_parent, "position": position}
    changed = or_(*(value.is_distinct_from(a[f"old_{name}"]) for name, value in values.items()))
    completes = and_(status == literal("done"), a.old_status != literal("done"))
    moves_list = to_list.is_distinct_from(a.old_list_id)
    # Its subtasks follow it to another list; completing it completes the open ones.
    cascades = and_(a.old_parent_id.is_(None), or_(completes, moves_list))
    others: tuple[Callable[[FromClause], ColumnElement[bool]], ...] = ()
    if many is not None:
        others = (many.others,)
    me = moving(around)
    opened_below = case(
        (cascades, count_subtasks(me, lambda s: s.c.status != "done", *others)), else_=0
    )
    changed_below = case(
        (and_(cascades, moves_list), count_subtasks(me, *others)), (cascades, opened_below), else_=0
    )
    # Making a subtask not done again while its parent is done makes the parent todo.
    reopens = and_(
        to_parent.is_not(None),
        a.old_status == literal("done"),
        status != literal("done"),
        p_status == literal("done"),
    )
    reopened = case((reopens, 1), else_=0)
    when_changed = case((changed, 1), else_=0)
    verdict = case(
        (a.old_id.is_(None), "not_found"),
        (~version_ok(a), "stale"),
        else_=func.coalesce(problem, OK),
    )
    plan = select(
        verdict.label("verdict"),
        a.base,
        a.old_id.label("id"),
        a.old_version,
        a.old_list_id,
        *(value.label(name) for name, value in values.items()),
        (status == literal("done")).label("completed"),
        case(
            (status == literal("done"), func.coalesce(a.old_completed_at, timestamp("now")))
        ).label("completed_at"),
        (func.coalesce(a.old_version, 0) + when_changed).label("version"),
        case((changed, timestamp("now")), else_=a.old_updated_at).label("updated_at"),
        case((changed, a.base + 1), else_=a.old_change_position).label("change_position"),
        case((completes, true()), else_=false()).label("completes"),
        case((moves_list, true()), else_=false()).label("moves_list"),
        changed_below.label("below"),
        case((reopens, true()), else_=false()).label("reopens"),
        respace.label("respace"),
        slot.label("slot"),
        (open_count(a.old_status) + opened_below).label("before"),
        (open_count(status) + case((completes, 0), else_=opened_below) + reopened).label("after"),
        (when_changed + changed_below + reopened + siblings).label("entries"),
    ).select_from(around)
    if "tags" in fields:
        plan = plan.add_columns(
            bindparam("tag_keys", type_=TASKS.c.tag_keys.type).label("tag_keys")
        )
    else:
        plan = plan.add_columns(a.old_tag_keys.label("tag_keys"))
    if many is not None:
        plan = plan.add_columns(a.n, a.asked, a.old_parent_id)
    return plan, status_may_change, moves


# What a change writes from its plan, besides the bookkeeping.
TASK_VALUES = (
    "title",
    "description",
    "priority",
    "due_date",
    "tags",
    "status",
    "list_id",
    "parent_id",
    "position",
)


def changed_step(plan: FromClause) -> UpdateBase:
    """The step that writes the task's row as the plan says."""
    written = (*TASK_VALUES, "tag_keys", "completed", "completed_at", "version", "updated_at")
    return (
        update(TASKS)
        .where(
            TASKS.c.user_id == owner(),
            TASKS.c.id == plan.c.id,
            plan.c.verdict == OK,
        )
        .values({name: plan.c[name] for name in (*written, "change_position")})
        .returning(*COLUMNS)
    )


@functools.lru_cache(maxsize=1024)
def _change(fields: tuple[str, ...], toggle: bool, if_match: bool, place: Place) -> Write:
    """A change of the task `task_id`: `fields` set from parameters of their names,
    `toggle` flips its completion, `place` says where it goes."""
    task = task_id_param()
    found = stage(found_rows(), "found")
    plan, status_may_change, moves = change_plan(
        found,
        task=task,
        fields=fields,
        toggle=toggle,
        version_ok=lambda a: matches(a.old_version, if_match),
        place=place,
    )

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        steps: list[tuple[str, UpdateBase]] = [("changed", changed_step(plan))]
        if status_may_change or moves:
            steps.append(("below", below_step(plan)))
        if status_may_change:
            steps.append(("parent", reopened_step(plan)))
        if moves:
            steps.append(("respaced", respaced_step(plan, task=task, first=_after_below(plan) + 1)))
        if status_may_change or moves:
            steps.append(("lists", _lists_counted(plan)))
        return [*steps, ("counter", advance(plan))]

    return Write(plan, steps, returns="changed")


def _parent_status(parent: Any) -> Any:
    p = TASKS.alias("p")
    return select(p.c.status).where(p.c.user_id == owner(), p.c.id == parent).scalar_subquery()


def _after_below(plan: FromClause) -> Any:
    """The last change position the task, its subtasks and its parent take."""
    return plan.c.base + 1 + plan.c.below + case((plan.c.reopens, 1), else_=0)


def below_step(plan: FromClause, many: Many | None = None) -> UpdateBase:
    """The step that carries a change to the task's subtasks: to its new list, and done
    when it became done. (Each subtask reads its own parent's plan row: with `many`
    there is one per task, and a task of the request is left to its own.)"""
    s = TASKS.alias("s")
    numbered = (
        select(
            s.c.id,
            func.row_number()
            .over(partition_by=s.c.parent_id, order_by=(s.c.position, s.c.id))
            .label("n"),
            plan.c.base,
            plan.c.list_id,
            plan.c.completes,
        )
        .where(
            s.c.user_id == owner(),
            s.c.parent_id == plan.c.id,
            plan.c.verdict == OK,
            plan.c.below > 0,
            or_(plan.c.moves_list, s.c.status != "done"),
            *([many.others(s)] if many is not None else []),
        )
        .subquery("numbered")
    )
    completes = numbered.c.completes
    return (
        update(TASKS)
        .where(
            TASKS.c.user_id == owner(),
            TASKS.c.id == numbered.c.id,
            only_if(plan, plan.c.below > 0),
        )
        .values(
            list_id=numbered.c.list_id,
            status=case((completes, _DONE), else_=TASKS.c.status),
            completed=case((completes, true()), else_=TASKS.c.completed),
            completed_at=case(
                (completes, func.coalesce(TASKS.c.completed_at, timestamp("now"))),
                else_=TASKS.c.completed_at,
            ),
            version=TASKS.c.version + 1,
            updated_at=timestamp("now"),
            change_position=numbered.c.base + 1 + numbered.c.n,
        )
    )


def reopened_step(plan: FromClause) -> UpdateBase:
    """The step that makes the parent todo again, when the plan says so."""
    return (
        update(TASKS)
        .where(
            TASKS.c.user_id == owner(),
            TASKS.c.id == plan.c.parent_id,
            plan.c.reopens,
            plan.c.verdict == OK,
        )
        .values(
            status=_TODO,
            completed=false(),
            completed_at=null(),
            version=TASKS.c.version + 1,
            updated_at=timestamp("now"),
            change_position=plan.c.base + 2 + plan.c.below,
        )
    )


def _lists_counted(plan: FromClause) -> UpdateBase:
    """The step that moves open_tasks: `before` open tasks leave list `old_list_id`,
    `after` arrive in `list_id` (the same list, or NULL for the inbox, alike)."""
    old, new = plan.c.old_list_id, plan.c.list_id
    return (
        update(LISTS)
        .where(
            LISTS.c.user_id == owner(),
            or_(LISTS.c.id == old, LISTS.c.id == new),
            plan.c.verdict == OK,
            or_(plan.c.before != plan.c.after, old.is_distinct_from(new)),
        )
        .values(
            open_tasks=LISTS.c.open_tasks
            - case((LISTS.c.id == old, plan.c.before), else_=0)
            + case((LISTS.c.id == new, plan.c.after), else_=0)
        )
    )


def update_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    versions: Collection[int] | None = None,
) -> Outcome:
    """Apply `changes` (title, description, status, completed, priority, due_date, tags,
    list_id, parent_id). The outcome's verdict is "ok", not_found, stale (with If-Match,
    `versions`, the task is at none of them), or a problem with the place.

    `status` and `completed` must agree when both are given (the schema checks):
    `completed: true` means `done`; `completed: false` turns `done` into `todo` and
    leaves the other states. A new list or parent puts the task last among its new
    siblings. `version` and `updated_at` move only when a value really differs, so
    repeating an update changes nothing.
    """
    values = written_values(changes)
    if PLAIN.issuperset(values) and not {"list_id", "parent_id"} & set(changes):
        return update_plainly(conn, user_id, task_id, values, versions)
    place = Place(list_given="list_id" in changes, parent_given="parent_id" in changes)
    write = _change(tuple(sorted(values)), False, conditional(versions), place)
    params = change_params(user_id, task_id, versions)
    params |= {"to_list": changes.get("list_id"), "to_parent": changes.get("parent_id")}
    return write.run(conn, **params, **values)


def written_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a change's fields (a list or parent is a place, not one), with
    what follows from them: `completed` from `status`, the tags' case-folded keys."""
    values = {k: v for k, v in changes.items() if k not in ("list_id", "parent_id")}
    if "status" in values:
        values["completed"] = values["status"] == "done"
    if "tags" in values:
        values["tag_keys"] = [tag_key(tag) for tag in values["tags"]]
    return values


def set_completed(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    completed: bool | None,
    versions: Collection[int] | None = None,
) -> Outcome:
    """Set `completed`, or flip it when `completed` is None.

    The flip reads the current state under the user's lock, so concurrent toggles each
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
    write = _change((), True, conditional(versions), Place())
    return write.run(conn, **change_params(user_id, task_id, versions))


def move_task(
    conn: Connection,
    *,
    user_id: str,
    task_id: uuid.UUID,
    order: Order,
    sibling: uuid.UUID | None = None,
    to_list: uuid.UUID | None = None,
    to_parent: uuid.UUID | None = None,
    list_given: bool = False,
    parent_given: bool = False,
    versions: Collection[int] | None = None,
) -> Outcome:
    """Put the task `order` (last, first, after or before `sibling`), in list `to_list`
    and under `to_parent` when given. Verdicts as `update_task`'s, and after_invalid or
    before_invalid when `sibling` is not one at the destination."""
    place = Place(list_given=list_given, parent_given=parent_given, order=order)
    params = change_params(user_id, task_id, versions)
    params |= {"to_list": to_list, "to_parent": to_parent}
    if order in ("after", "before"):
        params[f"{order}_id"] = sibling
    return _change((), False, conditional(versions), place).run(conn, **params)

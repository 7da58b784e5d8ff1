"""Where a task goes: the part of a write's plan that lists, subtasks and the manual
order share. Its destination (list and parent, and the first problem with them), its
neighbours there and its new key, and, when the group has no room left between them, the
step that respaces it. A create (creating.py) and a change (changing.py, bulk.py) read
these stages.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    CTE,
    ColumnElement,
    FromClause,
    Select,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.sql.dml import UpdateBase

from ..models import LISTS, TASKS
from ..positions import position_between, position_nth
from .tasks import MAX_SUBTASKS, count_subtasks, none
from .writes import owner, respaced, stage

# What a write's body says of the task's place (API.md, "Organizing"): `list_id` and
# `parent_id` given or not, and where among the new siblings: kept (a PUT: kept in its
# group, else last), last, first (`after: null`), after or before a sibling.
Order = Literal["keep", "last", "first", "after", "before"]


@dataclass(frozen=True)
class Place:
    list_given: bool = False
    parent_given: bool = False
    order: Order = "keep"


def uuid_param(name: str) -> ColumnElement[uuid.UUID]:
    return bindparam(name, type_=TASKS.c.id.type)


def _in_group(s: FromClause, parent: Any, list_id: Any) -> ColumnElement[bool]:
    """Whether the task row `s` is in the group of siblings (parent, list)."""
    return or_(
        and_(parent.is_not(None), s.c.parent_id == parent),
        and_(parent.is_(None), s.c.parent_id.is_(None), s.c.list_id.is_not_distinct_from(list_id)),
    )


def _over_group(
    value: Callable[[FromClause], Any],
    parent: Any,
    list_id: Any,
    where: Callable[[FromClause], Sequence[ColumnElement[bool]]] = lambda s: (),
) -> ColumnElement[Any]:
    """`value` (an aggregate of a task alias) over the group (parent, list), `where` holds:
    one of three subqueries, each a range of one of the manual order's indexes."""
    s = TASKS.alias("s")

    def over(*group: ColumnElement[bool]) -> ColumnElement[Any]:
        return select(value(s)).where(s.c.user_id == owner(), *group, *where(s)).scalar_subquery()

    return case(
        (parent.is_not(None), over(s.c.parent_id == parent)),
        (list_id.is_not(None), over(s.c.parent_id.is_(None), s.c.list_id == list_id)),
        else_=over(s.c.parent_id.is_(None), s.c.list_id.is_(None)),
    )


def destination(found: FromClause, place: Place, *, moving: Any) -> Select[Any]:
    """`found` and where the task goes: `to_parent`, `to_list`, its parent's status
    (`p_status`), and the first problem with the place (`problem`, NULL if none).
    `moving` is the id of the task being placed, None for a new one."""
    to_list, to_parent = uuid_param("to_list"), uuid_param("to_parent")
    if place.parent_given:
        parent: Any = to_parent
    elif moving is None:
        parent = none(TASKS.c.parent_id)
    elif place.list_given:  # to another list without a parent: it leaves its parent
        parent = case(
            (to_list.is_distinct_from(found.c.old_list_id), none(TASKS.c.parent_id)),
            else_=found.c.old_parent_id,
        )
    else:
        parent = found.c.old_parent_id
    if place.list_given:
        list_id: Any = to_list
    else:
        list_id = none(TASKS.c.list_id) if moving is None else found.c.old_list_id
    p = TASKS.alias("p")
    problems: list[tuple[ColumnElement[bool], str]] = []
    if place.list_given:
        listed = exists().where(LISTS.c.user_id == owner(), LISTS.c.id == to_list)
        problems.append((and_(to_list.is_not(None), ~listed), "list_missing"))
    if place.parent_given:
        problems += [
            (and_(to_parent.is_not(None), p.c.id.is_(None)), "parent_missing"),
            (p.c.parent_id.is_not(None), "parent_nested"),
        ]
        if moving is not None:
            problems += [
                (to_parent == moving, "parent_self"),
                (and_(to_parent.is_not(None), count_subtasks(moving) > 0), "has_subtasks"),
            ]
        if place.list_given:
            problems.append(
                (
                    and_(to_parent.is_not(None), to_list.is_distinct_from(p.c.list_id)),
                    "list_mismatch",
                )
            )
    if place.list_given or place.parent_given:
        joins = parent.is_not(None)
        if moving is not None:
            joins = and_(joins, parent.is_distinct_from(found.c.old_parent_id))
        problems.append((and_(joins, count_subtasks(parent) >= MAX_SUBTASKS), "subtask_limit"))
    problem = case(*problems, else_=null()) if problems else null()
    if moving is None and not place.parent_given:  # a new top-level task: no parent to read
        return select(
            *found.c,
            parent.label("to_parent"),
            list_id.label("to_list"),
            null().label("p_status"),
            problem.label("problem"),
        )
    return select(
        *found.c,
        parent.label("to_parent"),
        # A subtask is in its parent's list.
        case((p.c.id.is_not(None), p.c.list_id), else_=list_id).label("to_list"),
        p.c.status.label("p_status"),
        problem.label("problem"),
    ).select_from(found.outerjoin(p, and_(p.c.user_id == owner(), p.c.id == parent)))


def neighbours(dest: FromClause, order: Order, *, moving: Any) -> Select[Any]:
    """`dest` and the keys the task goes between: `low` and `high` (NULL: that end is
    open), `mark` (the sibling named by after/before), `stays` (it is there already: its
    key stays) and the first problem with the place (`place_problem`)."""
    parent, list_id = dest.c.to_parent, dest.c.to_list
    others = _others(moving)
    source: FromClause = dest
    problem: Any = dest.c.problem
    mark: Any = none(TASKS.c.position)
    if order in ("after", "before"):
        x = TASKS.alias("x")
        source = dest.outerjoin(
            x, and_(x.c.user_id == owner(), x.c.id == uuid_param(f"{order}_id"))
        )
        sibling = and_(
            x.c.id.is_not(None),
            x.c.id.is_distinct_from(moving),
            x.c.parent_id.is_not_distinct_from(parent),
            or_(parent.is_not(None), x.c.list_id.is_not_distinct_from(list_id)),
        )
        problem = func.coalesce(problem, case((~sibling, f"{order}_invalid")))
        mark = x.c.position

    def highest(*where: Callable[[FromClause], ColumnElement[bool]]) -> Any:
        return _over_group(lambda s: func.max(s.c.position), parent, list_id, others(*where))

    def lowest(*where: Callable[[FromClause], ColumnElement[bool]]) -> Any:
        return _over_group(lambda s: func.min(s.c.position), parent, list_id, others(*where))

    low: Any = none(TASKS.c.position)
    high: Any = none(TASKS.c.position)
    if order == "last":  # read only to tell whether it is last already
        low = highest()
    elif order == "first":
        high = lowest()
    elif order == "after":
        low, high = mark, lowest(lambda s: s.c.position > mark)
    else:
        low, high = highest(lambda s: s.c.position < mark), mark
    stays: Any = false()
    if moving is not None:
        old = dest.c.old_position
        stays = and_(
            parent.is_not_distinct_from(dest.c.old_parent_id),
            list_id.is_not_distinct_from(dest.c.old_list_id),
        )
        if order != "keep":  # and between its neighbours-to-be: an open end is no bound
            if order != "first":
                stays = and_(stays, or_(low.is_(None), old > low))
            if order != "last":
                stays = and_(stays, or_(high.is_(None), old < high))
    return select(
        *dest.c,
        low.label("low"),
        high.label("high"),
        mark.label("mark"),
        case((stays, true()), else_=false()).label("stays"),
        problem.label("place_problem"),
    ).select_from(source)


def _others(moving: Any) -> Callable[..., Callable[[FromClause], Any]]:
    """A group's members but the task being placed, and those `where` holds."""

    def others(*where: Callable[[FromClause], ColumnElement[bool]]) -> Callable[[FromClause], Any]:
        if moving is None:
            return lambda s: tuple(w(s) for w in where)
        return lambda s: (s.c.id != moving, *(w(s) for w in where))

    return others


def respacing(around: FromClause, order: Order, *, moving: Any, respace: Any) -> tuple[Any, Any]:
    """Read only to respace (counting is not free in a large group): the task's `slot`
    (its rank once placed) and the number of its new `siblings`; 0 otherwise."""
    parent, list_id = around.c.to_parent, around.c.to_list
    others = _others(moving)

    def count(*where: Callable[[FromClause], ColumnElement[bool]]) -> Any:
        return _over_group(lambda s: func.count(), parent, list_id, others(*where))

    if order == "after":
        slot: Any = count(lambda s: s.c.position <= around.c.mark)
    elif order == "before":
        slot = count(lambda s: s.c.position < around.c.mark)
    else:
        slot = literal(0) if order == "first" else count()
    return case((respace, slot), else_=0), case((respace, count()), else_=0)


def keyed(around: FromClause, old: Any, order: Order) -> tuple[CTE, ColumnElement[bool]]:
    """`around` and the task's new `key` (`old` if it stays; NULL if the group must be
    respaced to make room); and whether it must. Last, it is appended: its key is made
    from the change position it is about to get (tasks_api/positions.py)."""
    if order in ("last", "keep"):
        chosen: Any = position_nth(around.c.base + 1)
    else:
        chosen = position_between(around.c.low, around.c.high)
    key = case((around.c.stays, old), else_=chosen)
    with_key = stage(select(*around.c, key.label("key")), "keyed")
    return with_key, and_(~with_key.c.stays, with_key.c.key.is_(None))


def respaced_step(plan: FromClause, *, task: Any, first: Any) -> UpdateBase:
    """The step that respaces the group (plan.parent_id, plan.list_id) around `task`."""
    return respaced(
        TASKS,
        plan,
        moving=task,
        first=first,
        group=lambda s: _in_group(s, plan.c.parent_id, plan.c.list_id),
    )

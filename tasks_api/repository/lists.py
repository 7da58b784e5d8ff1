"""Every SQL statement about lists: their pages, reading one, and the writes.

A list's `open_tasks` is a column the task writes keep (tasks_api/repository/creating.py,
changing.py, deleting.py), so reading lists never counts tasks. Writes follow
tasks_api/repository/writes.py.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    FromClause,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.sql.dml import UpdateBase

from ..db import Query
from ..models import LIST_TOMBSTONES, LISTS, POSITIONS, TASKS, TOMBSTONES
from ..positions import position_between, position_nth
from .writes import (
    OK,
    Outcome,
    Row,
    Write,
    advance,
    conditional,
    if_match_params,
    matches,
    now,
    owner,
    respaced,
    stage,
    timestamp,
)

MAX_LISTS = 1000
# What a list row reads as (API.md's list, in its order).
COLUMNS = tuple(LISTS.c[name] for name in ("id", "title", "position", "open_tasks"))
COLUMNS += tuple(LISTS.c[name] for name in ("created_at", "updated_at", "version"))
Order = Literal["last", "first", "after", "before"]


def _list_id() -> Any:
    return bindparam("list_id", type_=LISTS.c.id.type)


_GET = Query(select(*COLUMNS).where(LISTS.c.user_id == owner(), LISTS.c.id == _list_id()))


def get_list(conn: Connection, *, user_id: str, list_id: uuid.UUID) -> Row | None:
    return _GET.row(conn, owner=user_id, list_id=list_id)


def _page(after: bool) -> Query:
    stmt = select(*COLUMNS).where(LISTS.c.user_id == owner())
    if after:
        bound = tuple_(
            bindparam("after_position", type_=LISTS.c.position.type),
            bindparam("after_id", type_=LISTS.c.id.type),
        )
        stmt = stmt.where(tuple_(LISTS.c.position, LISTS.c.id) > bound)
    return Query(stmt.order_by(LISTS.c.position, LISTS.c.id).limit(bindparam("limit")))


_PAGES = {after: _page(after) for after in (False, True)}


def list_lists(
    conn: Connection, *, user_id: str, limit: int, after: tuple[str, uuid.UUID] | None = None
) -> Sequence[Row]:
    """One page of the user's lists in their manual order, past (position, id) `after`:
    a range of ix_lists_user_id_position_id, the same cost at any depth."""
    params: dict[str, Any] = {"owner": user_id, "limit": limit}
    if after is not None:
        params["after_position"], params["after_id"] = after
    return _PAGES[after is not None].rows(conn, **params)


def new_list(*, title: str) -> dict[str, Any]:
    """The columns of a list about to be created that the app decides."""
    moment = now()
    return {"id": uuid.uuid4(), "title": title, "created_at": moment, "updated_at": moment}


def _found(*, named: bool) -> Select[Any]:
    """The user's row (`base`, the list count) and, when `named`, the list `list_id` with
    its columns as old_*."""
    me = POSITIONS.alias("me")
    columns: list[Any] = [me.c.position.label("base"), me.c.lists.label("list_count")]
    if not named:
        return select(*columns).where(me.c.user_id == owner())
    lst = LISTS.alias("l")
    columns += [c.label(f"old_{c.key}") for c in lst.c if c.key != "user_id"]
    return (
        select(*columns)
        .select_from(me.outerjoin(lst, and_(lst.c.user_id == owner(), lst.c.id == _list_id())))
        .where(me.c.user_id == owner())
    )


def _over_lists(value: Any, moving: Any, *where: Any) -> Any:
    s = LISTS.alias("s")
    leave_out = () if moving is None else (s.c.id != moving,)
    return (
        select(value(s))
        .where(s.c.user_id == owner(), *leave_out, *(w(s) for w in where))
        .scalar_subquery()
    )


def _placed(found: FromClause, order: Order, *, moving: Any) -> Select[Any]:
    """`found` and the keys the list goes between (`low`, `high`), its `slot`, the
    number of other lists (`siblings`), whether it `stays`, and a `problem` with
    `after`/`before`."""
    source: FromClause = found
    problem: Any = null()
    mark: Any = null().cast(LISTS.c.position.type)
    if order in ("after", "before"):
        x = LISTS.alias("x")
        named = bindparam(f"{order}_id", type_=LISTS.c.id.type)
        source = found.outerjoin(x, and_(x.c.user_id == owner(), x.c.id == named))
        problem = case((or_(x.c.id.is_(None), x.c.id == moving), f"{order}_invalid"))
        mark = x.c.position

    def position(aggregate: Any) -> Any:
        return lambda s: aggregate(s.c.position)

    low: Any = null().cast(LISTS.c.position.type)
    high: Any = null().cast(LISTS.c.position.type)
    if order == "last":  # read only to tell whether it is last already
        low = _over_lists(position(func.max), moving)
    elif order == "first":
        high = _over_lists(position(func.min), moving)
    elif order == "after":
        low, high = mark, _over_lists(position(func.min), moving, lambda s: s.c.position > mark)
    else:
        low, high = _over_lists(position(func.max), moving, lambda s: s.c.position < mark), mark
    if moving is None:
        stays: Any = false()
    else:
        old = found.c.old_position
        stays = true()  # between its neighbours-to-be: an open end is no bound
        if order != "first":
            stays = and_(stays, or_(low.is_(None), old > low))
        if order != "last":
            stays = and_(stays, or_(high.is_(None), old < high))
    return select(
        *found.c,
        low.label("low"),
        high.label("high"),
        mark.label("mark"),
        case((stays, true()), else_=false()).label("stays"),
        problem.label("problem"),
    ).select_from(source)


def _key(placed: FromClause, old: Any, order: Order, moving: Any) -> tuple[Any, ...]:
    """The list's new position, whether the lists must be respaced to make room, and, read
    only then, its slot (its rank once placed) and how many other lists there are; the
    last three from the stage `keyed`, to select from."""
    # Last, it is appended: its key is made from its coming change position.
    appended = position_nth(placed.c.base + 1)
    between = appended if order == "last" else position_between(placed.c.low, placed.c.high)
    chosen = case((placed.c.stays, old), else_=between)
    keyed = stage(select(*placed.c, chosen.label("key")), "keyed")
    key, placed = keyed.c.key, keyed
    respace = and_(~placed.c.stays, key.is_(None))
    mark = placed.c.mark

    def count(*where: Any) -> Any:
        return _over_lists(lambda s: func.count(), moving, *where)

    slot: Any = {
        "first": literal(0),
        "after": count(lambda s: s.c.position <= mark),
        "before": count(lambda s: s.c.position < mark),
    }.get(order, count())
    slot = case((respace, slot), else_=0)
    position = case((respace, position_nth(slot)), else_=key)
    return position, respace, slot, case((respace, count()), else_=0), keyed


def _write_params(
    user_id: str, list_id: uuid.UUID, versions: Collection[int] | None
) -> dict[str, Any]:
    return {**if_match_params(versions), "owner": user_id, "list_id": list_id, "now": now()}


# --- create --------------------------------------------------------------------------------


def _create() -> Write:
    found = stage(_found(named=False), "found")
    placed = stage(_placed(found, "last", moving=None), "placed")
    position, respace, slot, siblings, placed = _key(
        placed, null().cast(LISTS.c.position.type), "last", None
    )
    p = placed.c
    verdict = case((p.list_count >= MAX_LISTS, "list_limit"), else_=OK)
    plan = select(
        verdict.label("verdict"),
        p.base,
        position.label("position"),
        respace.label("respace"),
        slot.label("slot"),
        (1 + siblings).label("entries"),
    ).select_from(placed)

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        values: dict[str, Any] = {
            "id": _list_id(),
            "user_id": owner(),
            "title": bindparam("title", type_=LISTS.c.title.type),
            "position": plan.c.position,
            "open_tasks": literal(0),
            "created_at": timestamp("now"),
            "updated_at": timestamp("now"),
            "version": literal(1),
            "change_position": plan.c.base + 1,
        }
        created = (
            insert(LISTS)
            .from_select(list(values), select(*values.values()).where(plan.c.verdict == OK))
            .returning(*COLUMNS)
        )
        return [
            ("respaced", respaced(LISTS, plan, moving=_list_id(), first=plan.c.base + 2)),
            ("created", created),
            ("counter", advance(plan, lists=1)),
        ]

    return Write(plan, steps, returns="created")


_CREATE = _create()


def create_list(
    conn: Connection, *, user_id: str, row: Mapping[str, Any], then: Any = None
) -> Outcome:
    """Create the list `row` (from `new_list`) last in the user's order; verdict "ok" or
    list_limit. `then` runs after, in the same transaction."""
    params = {"owner": user_id, "list_id": row["id"], "title": row["title"]}
    return _CREATE.run(conn, then=then, now=row["created_at"], **params)


# --- rename and move -------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _change(if_match: bool, order: Order | None) -> Write:
    """Rename the list `list_id` (`order` None) or move it (`order`)."""
    found = stage(_found(named=True), "found")
    placed = stage(_placed(found, order or "last", moving=_list_id()), "placed")
    p = placed.c
    if order is None:
        title: Any = bindparam("title", type_=LISTS.c.title.type)
        position: Any = p.old_position
        respace: Any = false()
        slot: Any = literal(0)
        siblings: Any = literal(0)
        changed = title.is_distinct_from(p.old_title)
    else:
        position, respace, slot, siblings, placed = _key(placed, p.old_position, order, _list_id())
        p = placed.c
        title = p.old_title
        changed = position.is_distinct_from(p.old_position)
    when_changed = case((changed, 1), else_=0)
    verdict = case(
        (p.old_id.is_(None), "not_found"),
        (~matches(p.old_version, if_match), "stale"),
        else_=func.coalesce(p.problem, OK) if order is not None else OK,
    )
    plan = select(
        verdict.label("verdict"),
        p.base,
        p.old_version,
        title.label("title"),
        position.label("position"),
        respace.label("respace"),
        slot.label("slot"),
        (func.coalesce(p.old_version, 0) + when_changed).label("version"),
        case((changed, timestamp("now")), else_=p.old_updated_at).label("updated_at"),
        case((changed, p.base + 1), else_=p.old_change_position).label("change_position"),
        (when_changed + siblings).label("entries"),
    ).select_from(placed)

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        written = ("title", "position", "version", "updated_at", "change_position")
        changed = (
            update(LISTS)
            .where(LISTS.c.user_id == owner(), LISTS.c.id == _list_id(), plan.c.verdict == OK)
            .values({name: plan.c[name] for name in written})
            .returning(*COLUMNS)
        )
        return [
            ("changed", changed),
            ("respaced", respaced(LISTS, plan, moving=_list_id(), first=plan.c.base + 2)),
            ("counter", advance(plan)),
        ]

    return Write(plan, steps, returns="changed")


def rename_list(
    conn: Connection,
    *,
    user_id: str,
    list_id: uuid.UUID,
    title: str,
    versions: Collection[int] | None = None,
) -> Outcome:
    """Rename the list; verdict "ok", not_found or stale. The same title changes nothing."""
    params = _write_params(user_id, list_id, versions)
    return _change(conditional(versions), None).run(conn, title=title, **params)


def move_list(
    conn: Connection,
    *,
    user_id: str,
    list_id: uuid.UUID,
    order: Order,
    sibling: uuid.UUID | None = None,
    versions: Collection[int] | None = None,
) -> Outcome:
    """Put the list `order` (last, first, after or before `sibling`) in the user's
    order; verdict "ok", not_found, stale, after_invalid or before_invalid."""
    params = _write_params(user_id, list_id, versions)
    if order in ("after", "before"):
        params[f"{order}_id"] = sibling
    return _change(conditional(versions), order).run(conn, **params)


# --- delete --------------------------------------------------------------------------------


def _members(*columns: Any) -> tuple[Select[Any], Select[Any]]:
    """`columns` of the list's tasks: its top-level tasks (a range of the list's index),
    and their subtasks (ranges of the subtasks' index)."""
    t, s = TASKS.alias("t"), TASKS.alias("s")

    def top(table: Any) -> Any:
        return and_(
            table.c.user_id == owner(), table.c.parent_id.is_(None), table.c.list_id == _list_id()
        )

    below = (
        select(*(c(s) for c in columns))
        .select_from(s.join(t, and_(t.c.id == s.c.parent_id, top(t))))
        .where(s.c.user_id == owner())
    )
    return select(*(c(t) for c in columns)).where(top(t)), below


@functools.lru_cache(maxsize=32)
def _delete(if_match: bool) -> Write:
    """Delete the list `list_id` and every task in it, leaving their tombstones."""
    found = stage(_found(named=True), "found")
    f = found.c
    counted = [
        select(func.count()).select_from(m.subquery()).scalar_subquery()
        for m in _members(lambda a: a.c.id)
    ]
    verdict = case(
        (f.old_id.is_(None), "not_found"),
        (~matches(f.old_version, if_match), "stale"),
        else_=OK,
    )
    tasks = counted[0] + counted[1]
    plan = select(
        verdict.label("verdict"),
        f.base,
        f.old_version,
        tasks.label("tasks"),
        (tasks + 1).label("entries"),
    ).select_from(found)

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        ok = exists(select(plan.c.verdict).where(plan.c.verdict == OK))
        members = union_all(*_members(lambda a: a.c.user_id, lambda a: a.c.id)).subquery("members")
        number = func.row_number().over(order_by=members.c.id)
        buried = insert(TOMBSTONES).from_select(
            ["user_id", "id", "position", "deleted_at"],
            select(members.c.user_id, members.c.id, plan.c.base + number, timestamp("now")).where(
                plan.c.verdict == OK
            ),
        )
        list_buried = insert(LIST_TOMBSTONES).from_select(
            ["user_id", "id", "position", "deleted_at"],
            select(owner(), _list_id(), plan.c.base + plan.c.entries, timestamp("now")).where(
                plan.c.verdict == OK
            ),
        )
        top, below = _members(lambda a: a.c.id)
        deleted = (
            delete(LISTS)
            .where(LISTS.c.user_id == owner(), LISTS.c.id == _list_id(), ok)
            .returning(LISTS.c.id)
        )
        return [
            ("buried", buried),
            ("list_buried", list_buried),
            (
                "subtasks",
                delete(TASKS).where(TASKS.c.user_id == owner(), TASKS.c.id.in_(below), ok),
            ),
            ("tasks", delete(TASKS).where(TASKS.c.user_id == owner(), TASKS.c.id.in_(top), ok)),
            ("deleted", deleted),
            ("counter", advance(plan, tasks=-plan.c.tasks, lists=-1)),
        ]

    return Write(plan, steps, returns="deleted")


def delete_list(
    conn: Connection,
    *,
    user_id: str,
    list_id: uuid.UUID,
    versions: Collection[int] | None = None,
) -> Outcome:
    """Delete the list and every task in it (subtasks included), leaving tombstones for
    all; verdict "ok", not_found or stale."""
    return _delete(conditional(versions)).run(conn, **_write_params(user_id, list_id, versions))

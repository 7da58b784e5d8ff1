"""Every SQL statement about one task: reading it, and the writes (pages of tasks are
tasks_api/repository/listing.py).

Statements are built once (a few variants per operation, cached) and run as `db.Query`s
with their values as parameters. Writes follow tasks_api/repository/writes.py: a plan
decided under the user's lock, and steps. Functions take the request's connection
(autocommit) and return rows as mappings; they know nothing of HTTP or JSON.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from sqlalchemy import (
    CTE,
    ColumnElement,
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
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql.dml import UpdateBase

from ..db import Query, pipeline
from ..models import (
    LISTS,
    POSITIONS,
    TASKS,
    TOMBSTONES,
)
from ..positions import position_between, position_nth
from .writes import (
    OK,
    Outcome,
    Row,
    Write,
    advance,
    advanced,
    conditional,
    if_match_params,
    matches,
    now,
    only_if,
    owner,
    respaced,
    stage,
    timestamp,
)

# A user's limits (API.md, "Limits for each user").
MAX_TASKS = 100_000
MAX_SUBTASKS = 200
# What a task row reads as: every column but the case-folded tags, which only the `tag`
# filter uses, the change position, which only the sync feed does, and top_level_id,
# which only the foreign key does.
COLUMNS = tuple(c for c in TASKS.c if c.key not in ("tag_keys", "change_position", "top_level_id"))
# The columns a create sets (top_level_id is generated).
WRITTEN = tuple(c for c in TASKS.c if c.key != "top_level_id")
INBOX: Literal["inbox"] = "inbox"  # the `list` filter's value for the tasks in no list
TOP_LEVEL: Literal["none"] = "none"  # the `parent` filter's value for tasks without one

# --- reading one ---------------------------------------------------------------------------


def task_id_param() -> ColumnElement[uuid.UUID]:
    return bindparam("task_id", type_=TASKS.c.id.type)


# The task's fields in the order the API answers them (tests/test_listing.py holds them to
# schemas.tasks.dump_task's), timestamps in RFC 3339 with microseconds and a Z, dates
# ISO: PostgreSQL writes the JSON of the tasks a read returns. Reading 17 columns of 21
# rows into Python objects, then dumping them, cost ~200 us of a list's CPU.
_TIMESTAMP = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
TASK_FIELDS = (
    "id",
    "user_id",
    "title",
    "description",
    "completed",
    "status",
    "priority",
    "due_date",
    "tags",
    "list_id",
    "parent_id",
    "position",
    "completed_at",
    "created_at",
    "updated_at",
    "version",
)


def _field(name: str) -> str:
    column = f"tasks.{name}"
    if name.endswith("_at"):
        return f"{_TIMESTAMP.format(column)} AS {name}"
    if name == "due_date":
        return f"to_char({column}, 'YYYY-MM-DD') AS {name}"
    return column


# Correlated with the statement's own `tasks` (not an alias): each read selects from it.
TASK_JSON: ColumnElement[str] = literal_column(
    f"(SELECT row_to_json(task)::text FROM (SELECT {', '.join(map(_field, TASK_FIELDS))}) task)"
)


_GET = Query(select(*COLUMNS).where(TASKS.c.user_id == owner(), TASKS.c.id == task_id_param()))
_GET_JSON = Query(
    select(TASK_JSON.label("task_json"), TASKS.c.version).where(
        TASKS.c.user_id == owner(), TASKS.c.id == task_id_param()
    )
)


def get_task(
    conn: Connection, *, user_id: str, task_id: uuid.UUID, encoded: bool = False
) -> Row | None:
    """The task; `encoded`: on PostgreSQL, as the API's JSON text (`task_json`) and its
    `version` only."""
    query = _GET_JSON if encoded and conn.dialect.name == "postgresql" else _GET
    return query.row(conn, owner=user_id, task_id=task_id)


def tag_key(tag: str) -> str:
    """What two tags that differ only in case have in common."""
    return tag.casefold()


# --- where a task goes: the plan's part that lists, subtasks and the manual order share ---

# What a write's body says of the task's place (API.md, "Organizing"): `list_id` and
# `parent_id` given or not, and where among the new siblings: kept (a PUT: kept in its
# group, else last), last, first (`after: null`), after or before a sibling.
Order = Literal["keep", "last", "first", "after", "before"]


@dataclass(frozen=True)
class Place:
    list_given: bool = False
    parent_given: bool = False
    order: Order = "keep"


def _uuid(name: str) -> ColumnElement[uuid.UUID]:
    return bindparam(name, type_=TASKS.c.id.type)


def _none(column: Any) -> Any:
    """NULL of the column's type: PostgreSQL takes an untyped NULL for text."""
    return null().cast(column.type)


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


def count_subtasks(parent: Any, *where: Callable[[FromClause], ColumnElement[bool]]) -> Any:
    """How many subtasks `parent` has (that satisfy `where`)."""
    s = TASKS.alias("s")
    return (
        select(func.count())
        .select_from(s)
        .where(s.c.user_id == owner(), s.c.parent_id == parent, *(w(s) for w in where))
        .scalar_subquery()
    )


def _destination(found: FromClause, place: Place, *, moving: Any) -> Select[Any]:
    """`found` and where the task goes: `to_parent`, `to_list`, its parent's status
    (`p_status`), and the first problem with the place (`problem`, NULL if none).
    `moving` is the id of the task being placed, None for a new one."""
    to_list, to_parent = _uuid("to_list"), _uuid("to_parent")
    if place.parent_given:
        parent: Any = to_parent
    elif moving is None:
        parent = _none(TASKS.c.parent_id)
    elif place.list_given:  # to another list without a parent: it leaves its parent
        parent = case(
            (to_list.is_distinct_from(found.c.old_list_id), _none(TASKS.c.parent_id)),
            else_=found.c.old_parent_id,
        )
    else:
        parent = found.c.old_parent_id
    if place.list_given:
        list_id: Any = to_list
    else:
        list_id = _none(TASKS.c.list_id) if moving is None else found.c.old_list_id
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


def _neighbours(dest: FromClause, order: Order, *, moving: Any) -> Select[Any]:
    """`dest` and the keys the task goes between: `low` and `high` (NULL: that end is
    open), `mark` (the sibling named by after/before), `stays` (it is there already: its
    key stays) and the first problem with the place (`place_problem`)."""
    parent, list_id = dest.c.to_parent, dest.c.to_list
    others = _others(moving)
    source: FromClause = dest
    problem: Any = dest.c.problem
    mark: Any = _none(TASKS.c.position)
    if order in ("after", "before"):
        x = TASKS.alias("x")
        source = dest.outerjoin(x, and_(x.c.user_id == owner(), x.c.id == _uuid(f"{order}_id")))
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

    low: Any = _none(TASKS.c.position)
    high: Any = _none(TASKS.c.position)
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


def _respacing(around: FromClause, order: Order, *, moving: Any, respace: Any) -> tuple[Any, Any]:
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


def _keyed(around: FromClause, old: Any, order: Order) -> tuple[CTE, ColumnElement[bool]]:
    """`around` and the task's new `key` (`old` if it stays; NULL if the group must be
    respaced to make room); and whether it must. Last, it is appended: its key is made
    from the change position it is about to get (tasks_api/positions.py)."""
    if order in ("last", "keep"):
        chosen: Any = position_nth(around.c.base + 1)
    else:
        chosen = position_between(around.c.low, around.c.high)
    key = case((around.c.stays, old), else_=chosen)
    keyed = stage(select(*around.c, key.label("key")), "keyed")
    return keyed, and_(~keyed.c.stays, keyed.c.key.is_(None))


def _respaced(plan: FromClause, *, task: Any, first: Any) -> UpdateBase:
    """The step that respaces the group (plan.parent_id, plan.list_id) around `task`."""
    return respaced(
        TASKS,
        plan,
        moving=task,
        first=first,
        group=lambda s: _in_group(s, plan.c.parent_id, plan.c.list_id),
    )


def _found(*, task: bool = True) -> Select[Any]:
    """The user's row (the write's `base`: the change counter before it; the task count)
    and, when `task`, the task named by `task_id`, its columns as old_* (NULL when it is
    not the user's)."""
    me = POSITIONS.alias("me")
    columns: list[Any] = [me.c.position.label("base"), me.c.tasks.label("task_count")]
    if not task:
        return select(*columns).where(me.c.user_id == owner())
    t = TASKS.alias("t")
    columns += [c.label(f"old_{c.key}") for c in t.c if c.key not in ("top_level_id", "user_id")]
    return (
        select(*columns)
        .select_from(me.outerjoin(t, and_(t.c.user_id == owner(), t.c.id == task_id_param())))
        .where(me.c.user_id == owner())
    )


# Spelled in the SQL: a bound value in a SET clause is named after its column, and a
# request's own `status` parameter would stand in for it.
_DONE, _TODO = (
    literal_column("'done'", TASKS.c.status.type),
    literal_column("'todo'", TASKS.c.status.type),
)


def open_count(status: Any) -> ColumnElement[int]:
    return case((status != literal("done"), 1), else_=0)


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


# --- creating ------------------------------------------------------------------------------


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
    found = stage(_found(task=False), "found")
    around = stage(_destination(found, place, moving=None), "dest")
    key = position_nth(around.c.base + 1)  # appended: no neighbour to read
    respace = key.is_(None)
    slot, siblings = _respacing(around, "last", moving=None, respace=respace)
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
            ("respaced", _respaced(plan, task=_uuid("new_id"), first=plan.c.base + 2)),
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
        outcome = _create_in_inbox(conn, task, then=then)
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


# --- the two writes that read no other row: one statement, no lock first ------------------
# (tasks_api/repository/writes.py: `advanced`). A PUT of plain fields changes its task and
# nothing else; a create into the inbox appends, which needs no neighbour. They are the
# most frequent writes, and each costs about half of the general protocol.

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


def _update_plainly(
    conn: Connection,
    user_id: str,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    versions: Collection[int] | None,
) -> Outcome:
    query = _plain_update(conn.dialect.name, tuple(sorted(values)), conditional(versions))
    params = {**values, **_change_params(user_id, task_id, versions)}
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
    values |= {"list_id": _none(TASKS.c.list_id), "parent_id": _none(TASKS.c.parent_id)}
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


def _create_in_inbox(conn: Connection, task: Mapping[str, Any], *, then: Any) -> Outcome:
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


# --- changing: PUT, completion, move ---------------------------------------------------------


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
        dest = stage(_destination(found, place, moving=moving(found)), "dest")
        placed = stage(_neighbours(dest, place.order, moving=moving(dest)), "placed")
        around, respace = _keyed(placed, placed.c.old_position, place.order)
        a = around.c
        slot, siblings = _respacing(around, place.order, moving=moving(around), respace=respace)
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
    found = stage(_found(), "found")
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
            steps.append(("respaced", _respaced(plan, task=task, first=_after_below(plan) + 1)))
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


def _change_params(
    user_id: str, task_id: uuid.UUID, versions: Collection[int] | None
) -> dict[str, Any]:
    return {**if_match_params(versions), "owner": user_id, "task_id": task_id, "now": now()}


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
        return _update_plainly(conn, user_id, task_id, values, versions)
    place = Place(list_given="list_id" in changes, parent_given="parent_id" in changes)
    write = _change(tuple(sorted(values)), False, conditional(versions), place)
    params = _change_params(user_id, task_id, versions)
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
    return write.run(conn, **_change_params(user_id, task_id, versions))


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
    params = _change_params(user_id, task_id, versions)
    params |= {"to_list": to_list, "to_parent": to_parent}
    if order in ("after", "before"):
        params[f"{order}_id"] = sibling
    return _change((), False, conditional(versions), place).run(conn, **params)


# --- deleting --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _delete(if_match: bool) -> Write:
    """Delete the task `task_id` and its subtasks, leaving a tombstone for each."""
    task = task_id_param()
    found = stage(_found(), "found")
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
    return _delete(conditional(versions)).run(conn, **_change_params(user_id, task_id, versions))

"""One action on up to 100 tasks, in one statement (API.md, "Many at once").

The plan is a change's or a delete's plan (tasks_api/repository/changing.py, deleting.py)
with a row per task asked for, and the steps are theirs, reading every row. What makes
many rows one write rather than many:

- Change positions: each row gets its own `base`, the counter plus what the rows before
  it may take (the task, its subtasks, a parent it reopens), so no two changes share one
  and a task moved to the end of a place gets a key above the rows before it
  (tasks_api/positions.py): the selection keeps its order.
- A task of the request changes by its own row only: no other row's cascade counts or
  changes it (a statement must not change a row twice), and one parent is reopened by
  its first row only. Every rule is checked against the tasks as they were when the
  request came.
- What rows share is summed: the lists' `open_tasks`, the user's counter and counts.
- All or nothing (`atomic`): if a row's verdict is not ok, every other row is `held`,
  and the steps, which change only rows whose verdict is ok, change nothing.

On SQLite the plan is read first, then the steps run for each row in turn, in the same
transaction, as a single write's do.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    FromClause,
    Integer,
    Select,
    String,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    column,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import UpdateBase

from ..db import Query, pipeline
from ..models import LISTS, POSITIONS, TASKS, TOMBSTONES
from . import keys
from .changing import Many, below_step, change_plan, changed_step, reopened_step, written_values
from .placing import Place
from .tasks import MAX_SUBTASKS, count_subtasks, open_count
from .writes import LOCK, OK, Row, Write, now, owner, stage, timestamp

Action = Literal["complete", "reopen", "delete", "move", "update"]
HELD = "held"  # ok, but another row is not, and the request is all or nothing


@dataclass(frozen=True)
class Variant:
    dialect: str
    action: Action
    fields: tuple[str, ...]  # what an update sets; ("completed",) for complete and reopen
    place: Place
    atomic: bool
    keyed: bool = False  # recorded under an Idempotency-Key, in the same statement


@dataclass(frozen=True)
class Result:
    id: uuid.UUID
    verdict: str  # ok, held, not_found, stale, or a problem (tasks_api/errors.py)
    version: int | None  # the version the task had, for a stale one
    task: Row | None  # the task as changed, for an ok change


# --- the rows: the tasks asked for ----------------------------------------------------------


def _subjects(dialect: str) -> FromClause:
    """The ids asked for, each with the version its `if_match` names (NULL: none) and its
    place in the request, `n` (from 1)."""
    if dialect == "postgresql":
        return (
            func.unnest(
                bindparam("ids", type_=ARRAY(Uuid())), bindparam("expect", type_=ARRAY(Integer()))
            )
            .table_valued(column("id", Uuid()), column("expect", Integer()), with_ordinality="n")
            .render_derived(name="subjects")
        )
    each = func.json_each(bindparam("subjects", type_=String())).table_valued("key", "value")
    return select(
        func.json_extract(each.c.value, "$[0]").label("id"),
        func.json_extract(each.c.value, "$[1]").label("expect"),
        (each.c.key + 1).label("n"),
    ).subquery("subjects")


def _many(dialect: str) -> Many:
    if dialect == "postgresql":
        ids = bindparam("ids", type_=ARRAY(Uuid()))
        return Many(asked=lambda value: value == any_(ids))
    each = func.json_each(bindparam("subjects", type_=String())).table_valued("value")
    asked = select(func.json_extract(each.c.value, "$[0]")).scalar_subquery()
    return Many(asked=lambda value: value.in_(asked))


def _found(dialect: str) -> Select[Any]:
    """A row per task asked for: its columns as old_* (NULL when it is not the user's),
    `expect`, `n`, the user's `task_count`, and `base`: the counter plus what the rows
    before it (in the tasks' order, then the request's) may take."""
    subjects = _subjects(dialect)
    me = POSITIONS.alias("me")
    t = TASKS.alias("t")
    reserve = 2 + count_subtasks(t.c.id)  # itself, its subtasks, a parent it reopens
    before = func.sum(reserve).over(order_by=(t.c.position, subjects.c.n), rows=(None, -1))
    columns: list[Any] = [
        (me.c.position + func.coalesce(before, 0)).label("base"),
        me.c.tasks.label("task_count"),
        subjects.c.n,
        subjects.c.id.label("asked"),
        subjects.c.expect,
        *(c.label(f"old_{c.key}") for c in t.c if c.key not in ("top_level_id", "user_id")),
    ]
    joined = me.join(subjects, true()).outerjoin(
        t, and_(t.c.user_id == owner(), t.c.id == subjects.c.id)
    )
    return select(*columns).select_from(joined).where(me.c.user_id == owner())


def _version_ok(a: Any) -> ColumnElement[bool]:
    """The task still has the version its if_match names (always, without one)."""
    return or_(a.expect.is_(None), a.old_version == a.expect)


# --- changes: complete, reopen, move, update ----------------------------------------------


def _settled(plan: CTE, many: Many, *, place: Place) -> Select[Any]:
    """The change plan with what needs the other rows: a parent reopened by its first
    row only (by none when it is asked for itself: its own row changes it), and the
    subtask limit counted over the rows that join one parent, in the request's order."""
    p = plan.c
    first = (
        func.count().filter(p.reopens).over(partition_by=p.parent_id, order_by=p.n, rows=(None, 0))
    )
    reopens = and_(p.reopens, ~many.asked(p.parent_id), first == 1)
    verdict: Any = p.verdict
    if place.list_given or place.parent_given:
        joins = and_(
            p.verdict == OK,
            p.parent_id.is_not(None),
            p.parent_id.is_distinct_from(p.old_parent_id),
        )
        earlier = (
            func.count().filter(joins).over(partition_by=p.parent_id, order_by=p.n, rows=(None, -1))
        )
        full = and_(joins, count_subtasks(p.parent_id) + earlier >= MAX_SUBTASKS)
        verdict = case((full, "subtask_limit"), else_=p.verdict)
    was, now_ = case((p.reopens, 1), else_=0), case((reopens, 1), else_=0)
    kept = [c for c in p if c.key not in ("verdict", "reopens", "after", "entries")]
    return select(
        verdict.label("verdict"),
        *kept,
        case((reopens, true()), else_=literal(False)).label("reopens"),
        (p.after - was + now_).label("after"),
        (p.entries - was + now_).label("entries"),
    )


def _all_or_nothing(plan: CTE) -> Select[Any]:
    """Every ok row held when some row is not ok."""
    p = plan.c
    failing = func.max(case((p.verdict != OK, 1), else_=0)).over()
    kept = [c for c in p if c.key != "verdict"]
    verdict = case((and_(p.verdict == OK, failing == 1), HELD), else_=p.verdict)
    return select(verdict.label("verdict"), *kept)


def _summed_lists(plan: FromClause, leaving: Any, arriving: Any) -> UpdateBase:
    """The step that moves the lists' open_tasks by what every row takes out of one list
    (`leaving` of `old_list_id`) and brings into another (`arriving` into `list_id`)."""
    ok = plan.c.verdict == OK
    deltas = (
        select(plan.c.old_list_id.label("list_id"), (-leaving).label("delta"))
        .where(ok)
        .union_all(select(plan.c.list_id, arriving).where(ok))
        .subquery("deltas")
    )
    summed = (
        select(deltas.c.list_id, func.sum(deltas.c.delta).label("delta"))
        .group_by(deltas.c.list_id)
        .subquery("summed")
    )
    return (
        update(LISTS)
        .where(LISTS.c.user_id == owner(), LISTS.c.id == summed.c.list_id, summed.c.delta != 0)
        .values(open_tasks=LISTS.c.open_tasks + summed.c.delta)
    )


def _counted(plan: FromClause, *, tasks: Any = None) -> UpdateBase:
    """The step that moves the user's counter past every row's changes (and the task
    count by `tasks`, summed)."""
    ok = plan.c.verdict == OK
    last = select(func.max(plan.c.base + plan.c.entries)).where(ok).scalar_subquery()
    # Never back: SQLite runs this for each row in turn, not in the order of their bases.
    values: dict[str, Any] = {
        "position": case((last > POSITIONS.c.position, last), else_=POSITIONS.c.position)
    }
    if tasks is not None:
        values["tasks"] = POSITIONS.c.tasks - select(func.sum(tasks)).where(ok).scalar_subquery()
    return (
        update(POSITIONS)
        .where(POSITIONS.c.user_id == owner(), exists(select(plan.c.verdict).where(ok)))
        .values(values)
    )


def _change(variant: Variant) -> Write:
    many = _many(variant.dialect)
    found = stage(_found(variant.dialect), "found")
    planned, status_may_change, moves = change_plan(
        found,
        task=None,
        fields=variant.fields,
        toggle=False,
        version_ok=_version_ok,
        place=variant.place,
        many=many,
    )
    plan: Select[Any] = _settled(stage(planned, "planned"), many, place=variant.place)
    if variant.atomic:
        plan = _all_or_nothing(stage(plan, "settled"))

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        steps: list[tuple[str, UpdateBase]] = [("changed", changed_step(plan))]
        if status_may_change or moves:
            steps.append(("below", below_step(plan, many)))
        if status_may_change:
            steps.append(("parent", reopened_step(plan)))
        if status_may_change or moves:
            steps.append(("lists", _summed_lists(plan, plan.c.before, plan.c.after)))
        return [*steps, ("counter", _counted(plan))]

    return BulkWrite(plan, steps, returns="changed", keyed=variant.keyed)


# --- delete ------------------------------------------------------------------------------


def _delete(variant: Variant) -> Write:
    """Delete each task asked for and its subtasks (those not asked for themselves),
    leaving a tombstone for each."""
    many = _many(variant.dialect)
    found = stage(_found(variant.dialect), "found")
    f = found.c
    top = f.old_parent_id.is_(None)
    below = case((top, count_subtasks(f.old_id, many.others)), else_=0)
    opened = case(
        (top, count_subtasks(f.old_id, lambda s: s.c.status != "done", many.others)), else_=0
    )
    verdict = case((f.old_id.is_(None), "not_found"), (~_version_ok(f), "stale"), else_=OK)
    plan: Select[Any] = select(
        verdict.label("verdict"),
        f.base,
        f.n,
        f.asked,
        f.old_version,
        f.old_id.label("id"),
        f.old_list_id,
        f.old_list_id.label("list_id"),
        (open_count(f.old_status) + opened).label("opened"),
        (1 + below).label("entries"),
    ).select_from(found)
    if variant.atomic:
        plan = _all_or_nothing(stage(plan, "planned"))

    def steps(plan: FromClause) -> list[tuple[str, UpdateBase]]:
        t = TASKS.alias("t")
        mine = or_(t.c.id == plan.c.id, and_(t.c.parent_id == plan.c.id, many.others(t)))
        numbered = func.row_number().over(
            partition_by=plan.c.id, order_by=(t.c.parent_id.is_not(None), t.c.id)
        )
        doomed = (
            select(t.c.user_id, t.c.id, (plan.c.base + numbered).label("position"))
            .where(t.c.user_id == owner(), mine, plan.c.verdict == OK)
            .subquery("doomed")
        )
        buried = insert(TOMBSTONES).from_select(
            ["user_id", "id", "position", "deleted_at"],
            select(doomed.c.user_id, doomed.c.id, doomed.c.position, timestamp("now")),
        )
        deleted = (
            delete(TASKS)
            .where(TASKS.c.user_id == owner(), TASKS.c.id.in_(select(doomed.c.id)))
            .returning(TASKS.c.id)
        )
        return [
            ("buried", buried),
            ("deleted", deleted),
            ("lists", _summed_lists(plan, plan.c.opened, literal(0))),
            ("counter", _counted(plan, tasks=plan.c.entries)),
        ]

    return BulkWrite(plan, steps, returns="deleted", keyed=variant.keyed)


# --- running -------------------------------------------------------------------------------


class BulkWrite(Write):
    """A write of many rows: PostgreSQL answers a row per task asked for, in the
    request's order, with what the `returns` step returned for it; SQLite runs the steps
    for each plan row."""

    def __init__(self, plan: Select[Any], steps: Any, *, returns: str, keyed: bool) -> None:
        super().__init__(plan, steps, returns=returns)
        self.keyed = keyed

    @functools.cached_property
    def _statement(self) -> tuple[Query, str]:
        plan = self.plan.cte("plan")
        ctes = {name: step.cte(name) for name, step in self.steps(plan)}
        returned = ctes.pop(self.returns)
        if self.keyed:
            ctes["recorded"] = keys.recorded_bulk(plan, returned).cte("recorded")
        answer = (
            select(
                plan.c.asked.label("plan_asked"),
                plan.c.verdict.label("plan_verdict"),
                plan.c.old_version.label("plan_old_version"),
                *returned.c,
            )
            .select_from(plan.outerjoin(returned, returned.c.id == plan.c.id))
            .order_by(plan.c.n)
            .add_cte(*ctes.values())
        )
        return Query(answer), next(iter(returned.c)).key

    def results(self, conn: Connection, **params: Any) -> list[Result]:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            statement, _ = self._statement
            rows = pipeline(conn, [(LOCK[dialect], params), (statement, params)], answer=1)
            return [_result(row) for row in rows]
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            LOCK[dialect].rowcount(conn, **params)
            planned = Query(self.plan).rows(conn, **params)
            results = []
            for row in sorted(planned, key=lambda r: r["n"]):
                returned = self._steps_on_sqlite(conn, row, params)
                task = dict(returned[0]) if returned else None
                results.append(
                    Result(uuid.UUID(row["asked"]), row["verdict"], row["old_version"], task)
                )
            if self.keyed:
                keys.record_bulk(
                    conn,
                    user_id=params["owner"],
                    key=params["key_name"],
                    results=[_encoded(r) for r in results],
                )
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
        return results


def _encoded(result: Result) -> dict[str, Any]:
    """SQLite: a result as keys.recorded_bulk encodes one on PostgreSQL."""
    task = None
    if result.task is not None and len(result.task) > 1:
        task = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in result.task.items()}
        task |= {k: str(task[k]) for k in ("id", "list_id", "parent_id") if task.get(k)}
    return {
        "asked": str(result.id),
        "verdict": result.verdict,
        "old_version": result.version,
        "task": task,
    }


def replayed(record: Mapping[str, Any]) -> list[Result]:
    """The results a bulk request's key recorded."""
    return [
        Result(
            uuid.UUID(item["asked"]),
            item["verdict"],
            item["old_version"],
            None if item["task"] is None else keys.replayed_row(item["task"]),
        )
        for item in json.loads(record["response"])
    ]


def _result(row: Mapping[str, Any]) -> Result:
    task = dict(row)
    asked, verdict, version = (
        task.pop("plan_asked"),
        task.pop("plan_verdict"),
        task.pop("plan_old_version"),
    )
    found = task.get("id") is not None
    return Result(asked, verdict, version, task if found and len(task) > 1 else None)


@functools.lru_cache(maxsize=256)
def _write(variant: Variant) -> BulkWrite:
    write = _delete(variant) if variant.action == "delete" else _change(variant)
    assert isinstance(write, BulkWrite)
    return write


def run(
    conn: Connection,
    *,
    user_id: str,
    action: Action,
    ids: Sequence[uuid.UUID],
    expect: Mapping[uuid.UUID, int] | None = None,
    changes: Mapping[str, Any] | None = None,
    atomic: bool = False,
    key: str | None = None,
) -> list[Result]:
    """Apply `action` to the tasks `ids` (in that order); `expect`: the version a task
    must still have (its if_match). `changes`: a move's place (list_id and/or
    parent_id), or an update's fields; `key`: the Idempotency-Key claimed, under which
    the results are recorded in the same transaction. One result per id, in order."""
    changes, expect = dict(changes or {}), dict(expect or {})
    values: dict[str, Any] = {}
    place = Place()
    if action in ("complete", "reopen"):
        values = {"completed": action == "complete"}
    elif action == "update":
        values = written_values(changes)
    if action in ("move", "update"):
        place = Place(
            list_given="list_id" in changes,
            parent_given="parent_id" in changes,
            order="last" if action == "move" else "keep",
        )
    dialect = conn.dialect.name
    variant = Variant(dialect, action, tuple(sorted(values)), place, atomic, key is not None)
    params: dict[str, Any] = {**values, "owner": user_id, "now": now()}
    params |= {"to_list": changes.get("list_id"), "to_parent": changes.get("parent_id")}
    if key is not None:
        params |= {"key_name": key, "response_status": 200}
    if dialect == "postgresql":
        params |= {"ids": list(ids), "expect": [expect.get(i) for i in ids]}
    else:
        params["subjects"] = json.dumps([[i.hex, expect.get(i)] for i in ids])
    return _write(variant).results(conn, **params)

"""How every write runs: the user's row locked first, then one statement that decides and
writes, in one round trip.

The rules of lists, subtasks and the manual order read other rows than the ones they
write: a move reads its new neighbours, a create counts the user's tasks, completing a
parent finds its subtasks. Read in the same statement as the write, those rows come from
the statement's snapshot, taken before any lock it waits for: a sibling moved by a
request that committed meanwhile would be missed, and two moves could pick one key.

So on PostgreSQL a write is two statements sent together in psycopg's pipeline mode,
one transaction and one round trip (`db.Query.rows_after`):

1. `LOCK`: the user's row in `sync_positions` (made if missing), locked to the commit.
   Every write of the user takes it first, so the user's writes run one at a time.
2. The write: a `plan` (one row: what to do, or why not, decided from the rows as they
   are now: its snapshot is taken after 1 got the lock) and the `steps` that do it, each
   a data-modifying CTE reading the plan. The plan numbers every change the write makes
   after the user's change counter; the last step moves the counter past them.

On SQLite, which has one writer at a time, the same plan and steps run one after another
inside `BEGIN IMMEDIATE`: the plan is read first, and the steps see it as a row of bound
values. Steps are written so that both ways mean the same: each reads only the plan and
the rows it changes itself, and no two steps change the same row.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CTE,
    Boolean,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

from ..db import Query, pipeline
from ..models import POSITIONS, UTCDateTime
from ..positions import CEILING, FIRST, position_nth

Row = Mapping[str, Any]
# Builds a write's steps from its plan: (name, statement) pairs, in the order SQLite runs
# them.
Steps = Callable[[FromClause], Sequence[tuple[str, UpdateBase]]]
OK = "ok"


def now() -> datetime:
    return datetime.now(UTC)


def timestamp(name: str) -> ColumnElement[datetime]:
    # Typed, so SQLite stores it in the same form as the column's own values.
    return bindparam(name, type_=UTCDateTime())


def stage(query: Select[Any], name: str) -> CTE:
    """A step of a plan, as a CTE computed once. Inlined (the planner's default for a
    CTE used once), each stage's expressions would be copied into every expression that
    uses them, and the next stage's into those: planning a move took 375 ms."""
    return query.cte(name).prefix_with("MATERIALIZED")


def only_if(plan: FromClause, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """`condition` on the plan's row, as an uncorrelated EXISTS: the database decides it
    once, before it reads any row of the step (a step that ranks a whole group, joined to
    the plan, was otherwise ranked again for each row when the planner had no statistics)."""
    return exists(select(plan.c.verdict).where(condition))


def owner() -> ColumnElement[str]:
    return bindparam("owner", type_=POSITIONS.c.user_id.type)


def if_match_params(versions: Collection[int] | None) -> dict[str, list[int]]:
    return {} if versions is None else {"if_match": sorted(versions)}


def conditional(versions: Collection[int] | None) -> bool:
    """Whether If-Match names versions: a statement variant. One variant for any number
    of them (one array parameter): a statement for each count was a statement cached
    for each count a client chose to send (one worker 91 -> 854 MiB)."""
    return versions is not None


class _Versions(TypeDecorator[list[int]]):
    """The versions If-Match names: an integer array on PostgreSQL, JSON text on SQLite."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: list[int] | None, dialect: Dialect) -> Any:
        return value if dialect.name == "postgresql" else json.dumps(value)


class _VersionNamed(ColumnElement[bool]):
    """`version` is one of the If-Match parameter's versions."""

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [
        ("version", InternalTraversal.dp_clauseelement),
        ("versions", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, version: ColumnElement[int]) -> None:
        self.version = version
        self.versions = bindparam("if_match", type_=_Versions())


@compiles(_VersionNamed, "postgresql")
def _version_named_pg(element: _VersionNamed, compiler: Any, **kw: Any) -> str:
    version, versions = (
        compiler.process(element.version, **kw),
        compiler.process(element.versions, **kw),
    )
    return f"{version} = ANY(CAST({versions} AS INTEGER[]))"


@compiles(_VersionNamed)
def _version_named(element: _VersionNamed, compiler: Any, **kw: Any) -> str:
    version, versions = (
        compiler.process(element.version, **kw),
        compiler.process(element.versions, **kw),
    )
    return f"{version} IN (SELECT value FROM json_each({versions}))"


def matches(version: ColumnElement[int], if_match: bool) -> ColumnElement[bool]:
    """Whether `version` is one If-Match names (always, without If-Match; never, when
    it names none: only weak or foreign tags)."""
    return _VersionNamed(version) if if_match else true()


def _lock(dialect: str) -> Any:
    dialect_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    stmt = dialect_insert(POSITIONS).values(
        user_id=owner(), position=literal_column("0"), tasks=0, lists=0
    )
    # A no-op update: it takes the row lock, and changes nothing the steps read.
    stmt = stmt.on_conflict_do_update(
        index_elements=[POSITIONS.c.user_id], set_={"position": POSITIONS.c.position}
    )
    if dialect != "postgresql":
        return stmt
    # And for this transaction only: plan a prepared write once. Planning one takes 4 to
    # 10 ms; run, it takes about 1. Left to choose, PostgreSQL keeps making a plan for each
    # call's values, which can drop the CASE branches those values rule out, so its
    # estimate always beats the generic plan's, though the generic plan runs as fast.
    return stmt.returning(func.set_config("plan_cache_mode", "force_generic_plan", true()))


LOCK = {dialect: Query(_lock(dialect)) for dialect in ("postgresql", "sqlite")}


def advanced(dialect: str, *, creates: int | None = None) -> Any:
    """For a write that reads no other row of the user's, and so needs no lock first: the
    user's counter advanced by one in the write's own statement (made at 1 if missing),
    returning user_id and the new position. Its row lock, taken before the write's own
    row's and held to the commit, orders the user's writes as the lock statement does.

    `creates`: one task more, refused (no row returned) when the user has `creates`
    tasks already, or when the write's appended key would be out of range
    (tasks_api/positions.py).
    """
    dialect_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    stmt = dialect_insert(POSITIONS).values(
        user_id=owner(), position=literal_column("1"), tasks=int(creates is not None), lists=0
    )
    changes: dict[str, Any] = {"position": POSITIONS.c.position + 1}
    room = None
    if creates is not None:
        changes["tasks"] = POSITIONS.c.tasks + 1
        room = and_(
            POSITIONS.c.tasks < creates,
            POSITIONS.c.position + 1 < literal_column(str(CEILING - FIRST)),
        )
    stmt = stmt.on_conflict_do_update(
        index_elements=[POSITIONS.c.user_id], set_=changes, where=room
    )
    return stmt.returning(POSITIONS.c.user_id, POSITIONS.c.position)


def advance(plan: FromClause, *, tasks: Any = 0, lists: Any = 0) -> UpdateBase:
    """The step that moves the user's counter past the write's changes (`plan.entries`)
    and its task and list counts by `tasks` and `lists`."""
    return (
        POSITIONS.update()
        .where(POSITIONS.c.user_id == owner(), plan.c.verdict == OK)
        .values(
            position=POSITIONS.c.position + plan.c.entries,
            tasks=POSITIONS.c.tasks + tasks,
            lists=POSITIONS.c.lists + lists,
        )
    )


def respaced(
    table: Table,
    plan: FromClause,
    *,
    moving: Any,
    first: Any,
    group: Callable[[FromClause], ColumnElement[bool]] = lambda s: true(),
) -> UpdateBase:
    """The step that respaces the user's rows of `table` in `group` (a condition on the
    alias given) around `moving`, whose slot is plan.slot: every other member gets the
    key of its rank (tasks_api/positions.py), one further on past the slot; those whose
    key changes get a new version and the change position `first` + rank."""
    s = table.alias("s")
    ranked = (
        select(s.c.id, (func.row_number().over(order_by=(s.c.position, s.c.id)) - 1).label("rank"))
        .where(
            s.c.user_id == owner(), group(s), s.c.id != moving, plan.c.respace, plan.c.verdict == OK
        )
        .subquery("ranked")
    )
    key = position_nth(ranked.c.rank + case((ranked.c.rank >= plan.c.slot, 1), else_=0))
    return (
        update(table)
        .where(
            table.c.user_id == owner(),
            table.c.id == ranked.c.id,
            table.c.position != key,
            only_if(plan, plan.c.respace),
        )
        .values(
            position=key,
            version=table.c.version + 1,
            updated_at=timestamp("now"),
            change_position=first + ranked.c.rank,
        )
    )


# What of its plan a write reports (on PostgreSQL; SQLite has the plan's row at hand).
REPORTED = ("verdict", "old_version")


@dataclass(frozen=True)
class Outcome:
    plan: Row  # the plan's `verdict` ("ok", or why not) and the version it found
    rows: Sequence[Row]  # what the step named `returns` returned

    @property
    def verdict(self) -> str:
        return str(self.plan["verdict"])


class Write:
    """A write as a plan and its steps, run under the user's lock (see the module); the
    step named `returns` has a RETURNING clause, and its rows are the write's."""

    def __init__(self, plan: Select[Any], steps: Steps, *, returns: str) -> None:
        self.plan = plan
        self.steps = steps
        self.returns = returns

    def run(
        self,
        conn: Connection,
        *,
        then: tuple[Query, Mapping[str, Any]] | None = None,
        **params: Any,
    ) -> Outcome:
        """Run the write with `params`; `then`, a statement and its parameters, runs after
        it in the same transaction (and round trip) and sees what it wrote."""
        dialect = conn.dialect.name
        after = [then] if then is not None else []
        if dialect == "postgresql":
            statement, key = self._statement
            rows = pipeline(conn, [(LOCK[dialect], params), (statement, params), *after], answer=1)
            plan = {name[5:]: value for name, value in rows[0].items() if name[:5] == "plan_"}
            found = [
                {name: value for name, value in row.items() if name[:5] != "plan_"}
                for row in rows
                if row[key] is not None
            ]
            return Outcome(plan, found)
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            LOCK[dialect].rowcount(conn, **params)
            planned = Query(self.plan).row(conn, **params)
            assert planned is not None  # the user's row is there: one row
            returned = self._steps_on_sqlite(conn, planned, params)
            for query, then_params in after:
                query.rowcount(conn, **then_params)
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
        return Outcome(planned, returned)

    def _steps_on_sqlite(
        self, conn: Connection, planned: Row, params: Mapping[str, Any]
    ) -> Sequence[Row]:
        """SQLite: run the steps for a row of the plan; what the `returns` step returned."""
        bound = {f"plan_{name}": value for name, value in planned.items()}
        returned: Sequence[Row] = []
        for name, step in self._sqlite_steps:
            if name == self.returns:
                returned = step.rows(conn, **params, **bound)
            else:
                step.rowcount(conn, **params, **bound)
        return returned

    @functools.cached_property
    def _statement(self) -> tuple[Query, str]:
        """PostgreSQL: the plan and every step as CTEs of one statement, which answers
        what the plan reports (as plan_*) beside each row the `returns` step returned; and
        the name of that step's first column, NULL in the one row when it returned none."""
        plan = self.plan.cte("plan")
        ctes = {name: step.cte(name) for name, step in self.steps(plan)}
        returned = ctes.pop(self.returns)
        reported = [c for c in plan.c if c.key in REPORTED]
        answer = (
            select(*(c.label(f"plan_{c.key}") for c in reported), *returned.c)
            .select_from(plan.outerjoin(returned, true()))
            .add_cte(*ctes.values())
        )
        return Query(answer), next(iter(returned.c)).key

    @functools.cached_property
    def _sqlite_steps(self) -> Sequence[tuple[str, Query]]:
        """SQLite: the steps, reading the plan as one row of bound values."""
        bound = select(
            *(
                bindparam(f"plan_{c.key}", type_=c.type).label(c.key)
                for c in self.plan.selected_columns
            )
        ).subquery("plan")
        return [(name, Query(step)) for name, step in self.steps(bound)]

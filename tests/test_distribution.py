"""Ready for more than one database: every table is keyed by user first, and every
statement the repository can run names one user everywhere it reads or writes a table,
so the schema can be distributed by user_id (docs/distributed.md) and each request stays
on one shard."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Column, Insert, Table, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Delete, Update
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList
from sqlalchemy.sql.selectable import Alias, Join, Select

from tasks_api.db import Query
from tasks_api.models import TASKS, Base
from tasks_api.repository import (
    bulk,
    changes,
    changing,
    creating,
    deleting,
    keys,
    listing,
    lists,
    placing,
    shortcuts,
    tasks,
    writes,
)
from tasks_api.repository.placing import Place

DIALECTS = {
    "postgresql": postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.dialect(),
}
MODULES = (
    tasks,
    placing,
    creating,
    changing,
    deleting,
    shortcuts,
    listing,
    lists,
    keys,
    changes,
    writes,
    bulk,
)
# The statement factories below enumerate; a new one must be added here to be checked.
FACTORIES = {
    "listing.list_query",
    "creating._create",
    "changing._change",
    "deleting._delete",
    "shortcuts._plain_update",
    "shortcuts._inbox_create",
    "lists._change",
    "lists._delete",
    "keys._claim_query",
    "bulk._write",
    "keys._record",
}
# Deleting the expired idempotency keys and tombstones of every user at once is
# maintenance, run by the `flask purge` command on a schedule, never on a request path. On
# a distributed database it runs on every shard in parallel, which is what it should do.
MAINTENANCE = {"keys._PURGE", "changes._PURGES"}
USER_TABLES = {table.name for table in Base.metadata.tables.values()}
WRITE_FIELDS = ("title", "description", "status", "priority", "due_date", "tags")
ORDERS: tuple[placing.Order, ...] = ("keep", "last", "first", "after", "before")


def statements() -> Iterator[tuple[str, Any, list[str]]]:
    """(name, statement, dialects it runs on) for every statement the repository runs."""
    both = list(DIALECTS)
    for module in MODULES:
        short = module.__name__.rsplit(".", 1)[1]
        for name, value in vars(module).items():
            qualified = f"{short}.{name}"
            if qualified in MAINTENANCE:
                continue
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for key, item in values:
                dialects = [key] if key in DIALECTS else both
                if name.endswith("_SQLITE"):  # a step of a write PostgreSQL runs as one
                    dialects = ["sqlite"]
                if isinstance(item, Query):
                    yield qualified, item.statement, dialects
                elif isinstance(item, writes.Write):
                    yield from written(qualified, item)
    for dialect in both:
        for sort in listing.SORT_KEYS:
            for flags in itertools.product((False, True), repeat=6):
                variant = listing.ListVariant(*flags)  # type: ignore[arg-type]
                yield (
                    f"list {sort} {variant}",
                    listing.list_query(dialect, sort, variant).statement,
                    [dialect],
                )
            encoded = listing.ListVariant(after=True, by_tags=True, encoded=True)
            yield (
                f"list {sort} {encoded}",
                listing.list_query(dialect, sort, encoded).statement,
                [dialect],
            )
            for in_list, under in itertools.product((None, "inbox", "id"), (None, "none", "id")):
                variant = listing.ListVariant(after=True, in_list=in_list, under=under)  # type: ignore[arg-type]
                query = listing.list_query(dialect, sort, variant)
                yield f"list {sort} {variant}", query.statement, [dialect]
        yield f"claim {dialect}", keys._claim_query(dialect).statement, [dialect]
        yield f"inbox create {dialect}", shortcuts._inbox_create(dialect).statement, [dialect]
        for if_match in (False, True):
            for size in (1, 2, len(shortcuts.PLAIN)):
                for fields in itertools.combinations(sorted(shortcuts.PLAIN), size):
                    query = shortcuts._plain_update(dialect, fields, if_match)
                    yield f"plain {fields} {if_match} {dialect}", query.statement, [dialect]
        for resource in keys.RESOURCES:
            yield f"record {resource}", keys._record(dialect, resource).statement, [dialect]
    places = [
        Place(list_given, parent_given, order)
        for list_given, parent_given, order in itertools.product(
            (False, True), (False, True), ORDERS
        )
    ]
    for place in places:
        if place.order == "keep":
            yield from written(f"create {place}", creating._create(place))
        yield from written(f"move {place}", changing._change((), False, False, place))
    # If-Match adds a condition on the task's version, no table.
    yield from written("move if-match", changing._change((), False, True, places[-1]))
    for size in (1, 2, len(WRITE_FIELDS)):
        for fields in itertools.combinations(WRITE_FIELDS, size):
            names = {*fields, *(["completed"] if "status" in fields else [])}
            change = changing._change(tuple(sorted(names)), False, False, Place())
            yield from written(f"update {sorted(names)}", change)
    yield from bulk_writes()
    for if_match in (False, True):
        yield from written(f"toggle {if_match}", changing._change((), True, if_match, Place()))
        yield from written(f"delete task {if_match}", deleting._delete(if_match))
        yield from written(f"delete list {if_match}", lists._delete(if_match))
        for order in (None, "last", "first", "after", "before"):
            yield from written(f"list {order} {if_match}", lists._change(if_match, order))


def bulk_writes() -> Iterator[tuple[str, Any, list[str]]]:
    """Every kind of bulk action's statement, as each database runs it. (Each update
    field alone and all at once: fields change values, not what is read.)"""
    places = [Place(), Place(list_given=True), Place(parent_given=True), Place(True, True)]
    variants: list[tuple[str, tuple[str, ...], Place, bool]] = [
        ("complete", ("completed",), Place(), False),
        ("reopen", ("completed",), Place(), True),
        ("delete", (), Place(), False),
        ("delete", (), Place(), True),
    ]
    variants += [("move", (), Place(p.list_given, p.parent_given, "last"), True) for p in places]
    everything = tuple(sorted({*WRITE_FIELDS, "completed"}))
    for fields in [*((f,) for f in WRITE_FIELDS), everything]:
        names = tuple(sorted({*fields, *(["completed"] if "status" in fields else [])}))
        variants += [("update", names, place, False) for place in places]
    for action, fields, place, atomic in variants:
        for dialect in DIALECTS:
            variant = bulk.Variant(dialect, action, fields, place, atomic)  # type: ignore[arg-type]
            write = bulk._write(variant)
            name = f"bulk {action} {fields} {place} {atomic} {dialect}"
            if dialect == "postgresql":
                yield name, write._statement[0].statement, [dialect]
            else:
                yield f"{name} plan", write.plan, [dialect]
                for step, query in write._sqlite_steps:
                    yield f"{name} {step}", query.statement, [dialect]


def written(name: str, write: writes.Write) -> Iterator[tuple[str, Any, list[str]]]:
    """A write as PostgreSQL runs it (one statement) and as SQLite does (its plan, then
    each step)."""
    yield f"{name} (postgresql)", write._statement[0].statement, ["postgresql"]
    yield f"{name} plan", write.plan, ["sqlite"]
    for step, query in write._sqlite_steps:
        yield f"{name} {step}", query.statement, ["sqlite"]


def conjuncts(clause: Any) -> list[Any]:
    if clause is None:
        return []
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        return [c for part in clause.clauses for c in conjuncts(part)]
    return [clause]


def tables_and_conditions(froms: Any) -> tuple[list[Any], list[Any]]:
    """The tables (or their aliases) in a FROM list, joins opened, and the join conditions."""
    found: list[Any] = []
    conditions: list[Any] = []
    for item in froms:
        if isinstance(item, Join):
            inner, more = tables_and_conditions([item.left, item.right])
            found += inner
            conditions += more + conjuncts(item.onclause)
        elif isinstance(item, Table) or (
            isinstance(item, Alias) and isinstance(item.element, Table)
        ):
            found.append(item)
    return found, conditions


def names_user(table: Any, conditions: list[Any]) -> bool:
    """Some condition says `table.user_id = <parameter>`."""
    return any(
        isinstance(c, BinaryExpression)
        and c.operator is operators.eq
        and isinstance(c.left, Column)
        and c.left.table is table
        and c.left.name == "user_id"
        and isinstance(c.right, BindParameter)
        for c in conditions
    )


def unnamed(statement: Any) -> list[str]:
    """Every place in `statement` that reads or writes a user table without naming one
    user there; empty when there is none.

    A subquery may read a row of its enclosing query (a correlated reference): that
    table is named, or not, where the enclosing query reads it.
    """
    problems: list[str] = []
    seen: set[tuple[int, frozenset[int]]] = set()

    def walk(element: Any, outer: frozenset[int]) -> None:
        if (id(element), outer) in seen:
            return
        seen.add((id(element), outer))
        if isinstance(element, Select):
            found, joined = tables_and_conditions(element.get_final_froms())
            conditions = conjuncts(element.whereclause) + joined
            problems.extend(
                f"SELECT from {table.name}"
                for table in found
                if id(table) not in outer
                and _name(table) in USER_TABLES
                and not names_user(table, conditions)
            )
            outer = outer | {id(table) for table in found}
        elif isinstance(element, Update | Delete):
            if not names_user(element.table, conjuncts(element.whereclause)):
                problems.append(f"{type(element).__name__} of {_name(element.table)}")
        elif isinstance(element, Insert):
            if element.select is None:
                value = dict(element._values or {}).get("user_id")
                if not isinstance(value, BindParameter):
                    problems.append(f"INSERT into {_name(element.table)}")
            else:
                names = [getattr(c, "name", c) for c in element._select_names or ()]
                column = element.select.selected_columns[names.index("user_id")]
                if not isinstance(column, BindParameter | Column):
                    problems.append(f"INSERT into {_name(element.table)}: user_id elsewhere")
        for child in element.get_children():
            walk(child, outer)

    walk(statement, frozenset())
    return problems


def _name(table: Any) -> str:
    """The name of the table a FROM item reads (an alias's table's)."""
    named: Any = table.element if isinstance(table, Alias) else table
    return str(named.name)


def test_every_table_is_keyed_by_user_first() -> None:
    for table in Base.metadata.tables.values():
        assert [c.name for c in table.primary_key.columns][0] == "user_id", table.name


def test_the_factories_checked_are_all_there_are() -> None:
    cached = (type(functools.cache(lambda: None)),)
    found = {
        f"{module.__name__.rsplit('.', 1)[1]}.{name}"
        for module in MODULES
        for name, value in vars(module).items()
        if isinstance(value, cached)
    }
    assert found == FACTORIES


def test_every_statement_names_one_user_everywhere() -> None:
    checked = 0
    for name, statement, _ in statements():
        problems = unnamed(statement)
        assert problems == [], name
        checked += 1
    assert checked > 2000


def test_every_kind_of_statement_builds_on_its_database() -> None:
    # One of each kind (the variants of a kind differ by clauses the check above reads).
    kinds: dict[tuple[str, str], Any] = {}
    for name, statement, dialects in statements():
        for dialect in dialects:
            kinds.setdefault((name.split()[0], dialect), statement)
    for (_, dialect), statement in kinds.items():
        statement.compile(dialect=DIALECTS[dialect])


def test_the_purge_is_the_one_exception_and_says_so() -> None:
    assert unnamed(keys._PURGE.statement)
    for purge in changes._PURGES:
        assert unnamed(purge.statement)


def test_the_check_catches_a_statement_that_names_no_user() -> None:
    owner: Any = bindparam("owner")
    assert unnamed(select(TASKS).where(TASKS.c.id == bindparam("task_id")))
    assert unnamed(select(TASKS).where(TASKS.c.user_id != owner))
    assert unnamed(delete(TASKS))
    assert unnamed(select(TASKS).where(TASKS.c.user_id == owner)) == []
    # Deep: a subquery that reads another user's rows, inside a statement that names one.
    anyone = TASKS.alias("anyone")
    inner = select(anyone.c.id).where(anyone.c.title == "x").scalar_subquery()
    assert unnamed(select(TASKS).where(TASKS.c.user_id == owner, TASKS.c.id == inner)) == [
        "SELECT from anyone"
    ]
    # A join whose other side names no user.
    other = TASKS.alias("other")
    joined: Any = select(TASKS).select_from(TASKS.join(other, other.c.id == TASKS.c.id))
    assert unnamed(joined.where(TASKS.c.user_id == owner)) == ["SELECT from other"]

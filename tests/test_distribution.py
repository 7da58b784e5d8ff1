"""Ready for more than one database: every table is keyed by user first, and every
statement the repository can run names one user, so the schema can be distributed by
user_id (docs/distributed.md) and each request stays on one shard."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Column, Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList
from sqlalchemy.sql.selectable import CTE

from tasks_api import repository
from tasks_api.db import Query
from tasks_api.models import Base

DIALECTS = {
    "postgresql": postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.dialect(),
}
# The statement factories below enumerate; a new one must be added here to be checked.
FACTORIES = {"list_query", "_update_query", "_toggle_query", "_delete_query", "_claim_query"}
# Deleting the expired idempotency keys and tombstones of every user at once is
# maintenance, run by the `flask purge` command on a schedule, never on a request path. On
# a distributed database it runs on every shard in parallel, which is what it should do.
MAINTENANCE = {"_PURGE", "_PURGE_TOMBSTONES"}
# Statements built for one database only (the others run on both).
ONLY = {
    "_INSERT": "postgresql",
    "_CREATE_FOR_KEY": "postgresql",
    "_INSERT_SQLITE": "sqlite",
    "_ADVANCE_SQLITE": "sqlite",
}
WRITE_FIELDS = ("title", "description", "status", "completed", "priority", "due_date", "tags")


def statements() -> Iterator[tuple[str, Query, list[str]]]:
    """(name, statement, dialects it runs on) for every statement the repository runs."""
    both = list(DIALECTS)
    for name, value in vars(repository).items():
        if isinstance(value, Query) and name not in MAINTENANCE:
            yield name, value, [ONLY[name]] if name in ONLY else both
    versions = (None, 0, 1, 3)
    for dialect in both:
        for sort in repository.SORT_KEYS:
            for flags in itertools.product((False, True), repeat=6):
                variant = repository.ListVariant(*flags)
                yield (
                    f"list {dialect} {sort} {variant}",
                    repository.list_query(dialect, sort, variant),
                    [dialect],
                )
        yield f"claim {dialect}", repository._claim_query(dialect), [dialect]
    for size in range(1, len(WRITE_FIELDS) + 1):
        for fields in itertools.combinations(WRITE_FIELDS, size):
            # As update_task completes them: status sets completed, tags their keys.
            names = {*fields, *(["completed"] if "status" in fields else [])}
            names |= {"tag_keys"} if "tags" in fields else set()
            for if_match, dialect in itertools.product(versions, both):
                query = repository._update_query(dialect, tuple(sorted(names)), if_match)
                yield f"update {dialect} {sorted(names)} {if_match}", query, [dialect]
    for if_match, dialect in itertools.product(versions, both):
        toggle = repository._toggle_query(dialect, if_match)
        yield f"toggle {dialect} {if_match}", toggle, [dialect]
        yield f"delete {dialect} {if_match}", repository._delete_query(dialect, if_match), [dialect]


def names_one_user(statement: Any) -> bool:
    """The statement's WHERE requires `user_id = <parameter>`, or it inserts a row whose
    user_id is a parameter, or inserts the rows of a statement (a CTE) that does."""
    if isinstance(statement, Insert):
        if statement.select is None:
            values: dict[Any, Any] = dict(statement._values or {})
            return isinstance(values.get("user_id"), BindParameter)
        froms = statement.select.get_final_froms()
        if froms:
            return all(isinstance(f, CTE) and names_one_user(f.element) for f in froms)
        return isinstance(statement.select.selected_columns[0], BindParameter)
    where = statement.whereclause
    if where is None:
        return False
    conjuncts = (
        where.clauses
        if isinstance(where, BooleanClauseList) and where.operator is operators.and_
        else [where]
    )
    return any(
        isinstance(clause, BinaryExpression)
        and clause.operator is operators.eq
        and isinstance(clause.left, Column)
        and clause.left.name == "user_id"
        and isinstance(clause.right, BindParameter)
        for clause in conjuncts
    )


def test_every_table_is_keyed_by_user_first() -> None:
    for table in Base.metadata.tables.values():
        assert [c.name for c in table.primary_key.columns][0] == "user_id", table.name


def test_the_factories_checked_are_all_there_are() -> None:
    cached = type(functools.cache(lambda: None))
    found = {name for name, value in vars(repository).items() if isinstance(value, cached)}
    assert found == FACTORIES


def test_every_statement_names_one_user() -> None:
    checked = 0
    for name, query, dialects in statements():
        for dialect in dialects:
            query.statement.compile(dialect=DIALECTS[dialect])  # it builds, on its database
        assert names_one_user(query.statement), name
        checked += 1
    assert checked > 1000


def test_the_purge_is_the_one_exception_and_says_so() -> None:
    for name in MAINTENANCE:
        assert not names_one_user(getattr(repository, name).statement)


def test_the_check_catches_a_statement_that_names_no_user() -> None:
    from sqlalchemy import bindparam, delete, select

    tasks = repository.TASKS
    assert not names_one_user(select(tasks).where(tasks.c.id == bindparam("task_id")))
    assert not names_one_user(select(tasks).where(tasks.c.user_id != bindparam("owner")))
    assert not names_one_user(delete(tasks))
    assert names_one_user(select(tasks).where(tasks.c.user_id == bindparam("owner")))

"""The sync feed's statement (tasks_api/sync.py argues the design), and the purge of
tombstones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    literal,
    null,
    select,
    true,
    union_all,
)

from ..db import Query
from ..models import LIST_TOMBSTONES, LISTS, POSITIONS, TASKS, TOMBSTONES
from . import tasks
from .writes import Row, owner, timestamp
from .writes import now as clock

# Above every position: the tombstone bound of a first sync, which reads rows only.
NO_TOMBSTONES = 2**62
TOMBSTONE_RETENTION = timedelta(days=30)
# Tombstones outlive the tokens that may need them by this much: a delete's clock is read
# just before its statement, and instances' clocks differ by a little.
PURGE_MARGIN = timedelta(hours=1)
# What an entry is: a task or a list in its current state, or a deleted one's id.
KINDS = ("task", "deleted_task", "list", "deleted_list")


@dataclass(frozen=True)
class ChangesPage:
    """What changed after a position, in position order (at most `limit` entries)."""

    entries: Sequence[Row]  # each with its `kind` and `at`, its change position
    horizon: int  # the user's counter when read: every position up to it is in the read


def changes(
    conn: Connection, *, user_id: str, after: int, deleted_after: int, limit: int
) -> ChangesPage:
    """The user's tasks and lists changed after position `after` and tombstones after
    `deleted_after`, the first `limit` entries of the four in position order. One
    statement, so one snapshot: each branch is a range scan of its index."""
    entries: list[Row] = []
    horizon = 0  # a user who never wrote has no counter, and nothing to read
    for row in _CHANGES.rows(
        conn, owner=user_id, after=after, deleted_after=deleted_after, limit=limit
    ):
        horizon = int(row["horizon"])
        if row["at"] is not None:  # the counter's row alone: nothing after
            entries.append(row)
    return ChangesPage(entries, horizon)


def _changes_statement() -> Any:
    limit: Any = bindparam("limit")
    after = bindparam("after", type_=TASKS.c.change_position.type)
    deleted_after = bindparam("deleted_after", type_=TASKS.c.change_position.type)
    # Every branch has the task's columns and open_tasks, NULL where they do not apply.
    shape = [*tasks.COLUMNS, LISTS.c.open_tasks]

    def branch(table: Table, kind: str, at: Any, floor: Any) -> Any:
        kept = set(table.c.keys()) if kind in ("task", "list") else {"id", "user_id"}
        columns = [
            table.c[c.key] if c.key in kept else null().cast(c.type).label(c.key) for c in shape
        ]
        return (
            select(*columns, literal(kind).label("kind"), at.label("at"))
            .where(table.c.user_id == owner(), at > floor)
            .order_by(at)
            .limit(limit)
            .subquery(kind)
        )

    branches = [
        branch(TASKS, "task", TASKS.c.change_position, after),
        branch(TOMBSTONES, "deleted_task", TOMBSTONES.c.position, deleted_after),
        branch(LISTS, "list", LISTS.c.change_position, after),
        branch(LIST_TOMBSTONES, "deleted_list", LIST_TOMBSTONES.c.position, deleted_after),
    ]
    page = union_all(*(select(b) for b in branches)).subquery("page")
    return (
        select(POSITIONS.c.position.label("horizon"), *page.c)
        .select_from(POSITIONS.outerjoin(page, true()))
        .where(POSITIONS.c.user_id == owner())
        .order_by(page.c.at)
        .limit(limit)
    )


_CHANGES = Query(_changes_statement())


def purge_tombstones(conn: Connection, *, now: datetime | None = None) -> int:
    """Delete the tombstones (of tasks and of lists) past their retention and the margin;
    return how many.

    Safe while clients sync: a token old enough to need a purged tombstone is refused
    (410) before it reads anything.
    """
    expired = (now or clock()) - TOMBSTONE_RETENTION - PURGE_MARGIN
    return sum(purge.rowcount(conn, expired_before=expired) for purge in _PURGES)


_PURGES = [
    Query(delete(table).where(table.c.deleted_at < timestamp("expired_before")))
    for table in (TOMBSTONES, LIST_TOMBSTONES)
]

"""Tables, as typed SQLAlchemy 2 models."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

STATUSES = ("todo", "in_progress", "done")
PRIORITIES = ("low", "medium", "high", "urgent")
TITLE_MAX = 500
DESCRIPTION_MAX = 8000
LIST_TITLE_MAX = 200
# A list of strings: text[] on PostgreSQL (GIN-indexable), JSON text on SQLite.
StringList = ARRAY(Text()).with_variant(JSON(), "sqlite")
# A manual-order key (tasks_api/positions.py). Its order is code-point order, which is
# PostgreSQL's "C" collation (a language's collation could order digits otherwise) and
# SQLite's default.
PositionKey = String(64).with_variant(String(64, collation="C"), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    PostgreSQL stores `timestamptz` and answers in the session's time zone; SQLite
    stores text without a zone. Both come back as UTC here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class day_number(FunctionElement[int]):
    """A date as its number of days since 1970-01-01, so a sort can run it backwards.

    PostgreSQL subtracts dates; SQLite stores ISO text and counts with julianday().
    Both are deterministic, so they can be indexed.
    """

    type = Integer()
    inherit_cache = True


@compiles(day_number)
def _day_number_shown(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    """How str() shows it (statements run on PostgreSQL or SQLite)."""
    return f"day_number({compiler.process(element.clauses, **kw)})"


@compiles(day_number, "postgresql")
def _day_number_postgresql(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)} - DATE '1970-01-01')"


@compiles(day_number, "sqlite")
def _day_number_sqlite(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(julianday({compiler.process(element.clauses, **kw)}) - 2440587.5 AS INTEGER)"


# Below every day number (0001-01-01 is -719162, 9999-12-31 is 2932896): an undated
# task's key in both due-date sorts, so it comes after every dated one.
NO_DUE_DATE = -3_000_000
# The priority's rank, spelled as literals so the query's expression is the index's.
_RANK = "(CASE priority " + " ".join(f"WHEN '{name}' THEN {{}}" for name in PRIORITIES) + " END)"
PRIORITY_RANK: ColumnElement[int] = literal_column(_RANK.format(1, 2, 3, 4), Integer())
PRIORITY_RANK_REVERSED: ColumnElement[int] = literal_column(_RANK.format(-1, -2, -3, -4), Integer())


def due_key(*, descending: bool) -> ColumnElement[int]:
    """The due-date sort key: larger is earlier in the list, undated tasks smallest."""
    days = day_number(literal_column("due_date"))
    return func.coalesce(days if descending else -days, literal_column(str(NO_DUE_DATE)))


class Base(DeclarativeBase):
    # Stable constraint names, so migrations can refer to them.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime}


class Task(Base):
    __tablename__ = "tasks"

    # The primary key starts with user_id, as every sort's index does: the table can be
    # distributed by user (docs/distributed.md) and each request stays on one shard.
    id: Mapped[uuid.UUID]
    user_id: Mapped[str] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    description: Mapped[str | None] = mapped_column(String(DESCRIPTION_MAX))
    # `completed` is `status = 'done'` kept as a column (a check holds them together), so
    # the completed_at check and whatever already reads the table keep working.
    completed: Mapped[bool]
    status: Mapped[str] = mapped_column(String(11), server_default="todo")
    priority: Mapped[str] = mapped_column(String(6), server_default="medium")
    due_date: Mapped[date | None] = mapped_column(Date)
    # As sent (trimmed, de-duplicated), and case-folded for the `tag` filter.
    tags: Mapped[list[str]] = mapped_column(StringList)
    tag_keys: Mapped[list[str]] = mapped_column(StringList)
    # Where the task sits: its list (None: the inbox), its parent (None: top-level) and
    # its place among its siblings, the tasks of the same list and parent.
    list_id: Mapped[uuid.UUID | None]
    parent_id: Mapped[uuid.UUID | None]
    position: Mapped[str] = mapped_column(PositionKey)
    # The id again while the task is top-level, NULL once it is a subtask: the key a
    # subtask's parent_id refers to, so that on PostgreSQL the database itself refuses a
    # second level (a subtask as a parent, or a parent made a subtask), whichever
    # request comes first.
    top_level_id: Mapped[uuid.UUID | None] = mapped_column(
        Computed("CASE WHEN parent_id IS NULL THEN id END", persisted=True)
    )
    completed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    version: Mapped[int]
    # The user's change counter (SyncPosition) when the task last changed: the sync feed
    # reads "changed after position P" as a range of ix_tasks_user_id_change_position.
    change_position: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint("user_id", "id"),
        UniqueConstraint("user_id", "top_level_id").ddl_if(dialect="postgresql"),
        ForeignKeyConstraint(
            ["user_id", "parent_id"],
            ["tasks.user_id", "tasks.top_level_id"],
            name="fk_tasks_user_id_parent_id_tasks",
        ).ddl_if(dialect="postgresql"),
        Index("ix_tasks_user_id_change_position", "user_id", "change_position"),
        # The manual order, one group of siblings a range of one index: the inbox's
        # top-level tasks, a list's, and a task's subtasks. Each task is in exactly one.
        # The inbox has its own: after `list_id IS NULL` PostgreSQL would not read the
        # index in position order (an IS NULL is no equality to it).
        Index(
            "ix_tasks_inbox_position",
            "user_id",
            "position",
            "id",
            postgresql_where=text("parent_id IS NULL AND list_id IS NULL"),
            sqlite_where=text("parent_id IS NULL AND list_id IS NULL"),
        ),
        Index(
            "ix_tasks_user_id_list_id_position",
            "user_id",
            "list_id",
            "position",
            "id",
            postgresql_where=text("parent_id IS NULL AND list_id IS NOT NULL"),
            sqlite_where=text("parent_id IS NULL AND list_id IS NOT NULL"),
        ),
        Index(
            "ix_tasks_user_id_parent_id_position",
            "user_id",
            "parent_id",
            "position",
            "id",
            postgresql_where=text("parent_id IS NOT NULL"),
            sqlite_where=text("parent_id IS NOT NULL"),
        ),
        # One per list sort, so a page of one user's tasks is an index range scan in
        # either direction, however many tasks the user has and however deep the page.
        Index("ix_tasks_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_tasks_user_id_updated_at_id", "user_id", "updated_at", "id"),
        Index("ix_tasks_user_id_lower_title_id", "user_id", func.lower(text("title")), "id"),
        # The four sorts whose ties go newest first: every key runs the same way, so one
        # index each, scanned backwards.
        Index("ix_tasks_user_id_due_asc", "user_id", due_key(descending=False), "created_at", "id"),
        Index("ix_tasks_user_id_due_desc", "user_id", due_key(descending=True), "created_at", "id"),
        Index(
            "ix_tasks_user_id_priority_asc", "user_id", PRIORITY_RANK_REVERSED, "created_at", "id"
        ),
        Index("ix_tasks_user_id_priority_desc", "user_id", PRIORITY_RANK, "created_at", "id"),
        # The `tag` filter: tasks whose tag_keys contain every tag asked for.
        Index("ix_tasks_tag_keys", "tag_keys", postgresql_using="gin").ddl_if(dialect="postgresql"),
        CheckConstraint(
            "(completed AND completed_at IS NOT NULL) OR (NOT completed AND completed_at IS NULL)",
            name="completed_at_set_iff_completed",
        ),
        CheckConstraint("completed = (status = 'done')", name="completed_iff_done"),
        CheckConstraint("status IN ('todo', 'in_progress', 'done')", name="status_known"),
        CheckConstraint("priority IN ('low', 'medium', 'high', 'urgent')", name="priority_known"),
        CheckConstraint("version >= 1", name="version_positive"),
    )


# Indexes autogenerate (`flask db revision`) cannot compare: Alembic does not reflect these
# expressions back on every backend, and the GIN index exists on PostgreSQL only. Their
# migrations are written by hand; tests/test_listing.py checks the planner uses them.
EXPRESSION_INDEXES = frozenset(
    {
        "ix_tasks_user_id_due_asc",
        "ix_tasks_user_id_due_desc",
        "ix_tasks_user_id_priority_asc",
        "ix_tasks_user_id_priority_desc",
    }
)
# What exists on PostgreSQL only (ddl_if above): SQLite, with one writer at a time,
# needs neither the GIN index nor the foreign key's machinery.
POSTGRESQL_ONLY = frozenset(
    {"ix_tasks_tag_keys", "uq_tasks_user_id_top_level_id", "fk_tasks_user_id_parent_id_tasks"}
)


def compared_by_autogenerate(obj: Any, name: str | None, type_: str, *_: Any, dialect: str) -> bool:
    """Alembic's `include_object`: leave out what autogenerate would misreport."""
    if type_ == "index" and name in EXPRESSION_INDEXES:
        return False
    return not (dialect == "sqlite" and name in POSTGRESQL_ONLY)


class IdempotencyKey(Base):
    """A create made with an Idempotency-Key: claimed first, then what it created kept.

    `status` is NULL while the first request is in flight. Keys live 24 hours.
    """

    __tablename__ = "idempotency_keys"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    status: Mapped[int | None]
    # The created task's id, or the created list's.
    task_id: Mapped[uuid.UUID | None]
    # What was created, "task" or "list", and its row as the database wrote it (JSON): a
    # replay renders it as the first response did. NULL for a record made before lists
    # existed, whose `response` is the response body itself.
    resource: Mapped[str | None] = mapped_column(String(4))
    response: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


class SyncPosition(Base):
    """The user's row, which every write of the user's data locks before anything else
    (tasks_api/repository/writes.py), so one user's writes happen one at a time.

    `position` is the user's change counter: each task or list a write changes (or
    deletes) is stamped with a number of its own above it, and the counter moves past
    them. Held to the commit, the lock makes one user's writes commit in the order of
    their positions (tasks_api/sync.py says why that matters). `tasks` and `lists` are the
    counts the per-user limits need, kept exact by the writes that change them.
    """

    __tablename__ = "sync_positions"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    tasks: Mapped[int] = mapped_column(server_default="0")
    lists: Mapped[int] = mapped_column(server_default="0")

    __table_args__ = (
        CheckConstraint("tasks >= 0", name="tasks_not_negative"),
        CheckConstraint("lists >= 0", name="lists_not_negative"),
    )


class TaskList(Base):
    """A list of tasks (a project, a sidebar entry). The inbox is not one: it is the
    tasks whose list_id is NULL."""

    __tablename__ = "lists"

    id: Mapped[uuid.UUID]
    user_id: Mapped[str] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(LIST_TITLE_MAX))
    position: Mapped[str] = mapped_column(PositionKey)
    # How many of its tasks are not done, kept by every write that changes a task's list
    # or status: reading the lists costs the same however many tasks they hold.
    open_tasks: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    version: Mapped[int]
    change_position: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint("user_id", "id"),
        Index("ix_lists_user_id_position_id", "user_id", "position", "id"),
        Index("ix_lists_user_id_change_position", "user_id", "change_position"),
        CheckConstraint("open_tasks >= 0", name="open_tasks_not_negative"),
        CheckConstraint("version >= 1", name="version_positive"),
    )


class Tombstone(Base):
    """A deleted task, remembered for the sync feed until the retention has passed."""

    __tablename__ = "task_tombstones"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Unique per user, like the tasks' change_position: the feed's order and its range.
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[uuid.UUID]
    deleted_at: Mapped[datetime]

    # Only the purge reads by time. Tombstones arrive in time order, so on PostgreSQL a
    # BRIN index (a few bytes per range of pages, next to nothing to maintain) finds the
    # expired ones without adding a B-tree insert to every delete.
    __table_args__ = (
        Index("ix_task_tombstones_deleted_at", "deleted_at", postgresql_using="brin"),
    )


class ListTombstone(Base):
    """A deleted list, remembered for the sync feed as a task's tombstone is."""

    __tablename__ = "list_tombstones"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[uuid.UUID]
    deleted_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_list_tombstones_deleted_at", "deleted_at", postgresql_using="brin"),
    )


TASKS = cast(Table, Task.__table__)
LISTS = cast(Table, TaskList.__table__)
POSITIONS = cast(Table, SyncPosition.__table__)
TOMBSTONES = cast(Table, Tombstone.__table__)
LIST_TOMBSTONES = cast(Table, ListTombstone.__table__)
KEYS = cast(Table, IdempotencyKey.__table__)

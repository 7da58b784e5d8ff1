"""Idempotency keys: a create claims its key, then records what it created.

Keys live in the database, per user, so any number of instances honour them. The record
holds the created row as JSON (the database's own encoding of it), written in the same
transaction and round trip as the create; a replay decodes it and renders it as the
first response did.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..db import Query
from ..models import KEYS, LISTS, TASKS
from . import lists, tasks
from .writes import Row, now, owner, timestamp

KEY_LIFETIME = timedelta(hours=24)
# A claim whose request never finished (its process died) can be taken over after this.
CLAIM_TIMEOUT = timedelta(seconds=60)
# What a create records, by resource: its table and the columns its response shows.
RESOURCES = {"task": (TASKS, tasks.COLUMNS), "list": (LISTS, lists.COLUMNS)}
_UUIDS = ("id", "list_id", "parent_id")
_TIMES = ("completed_at", "created_at", "updated_at")


def claim_key(conn: Connection, *, user_id: str, key: str, request_hash: str) -> bool:
    """Claim `key` for a create about to run; False if a live record holds it already.

    One statement: insert the claim, or take over the record when it has expired or its
    request was abandoned in flight.
    """
    moment = now()
    claimed = _claim_query(conn.dialect.name).row(
        conn,
        user_id=user_id,
        key=key,
        request_hash=request_hash,
        now=moment,
        expired_before=moment - KEY_LIFETIME,
        abandoned_before=moment - CLAIM_TIMEOUT,
    )
    return claimed is not None


@functools.cache
def _claim_query(dialect: str) -> Query:
    dialect_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    stmt = dialect_insert(KEYS).values(
        user_id=bindparam("user_id"),
        key=bindparam("key"),
        request_hash=bindparam("request_hash"),
        created_at=timestamp("now"),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[KEYS.c.user_id, KEYS.c.key],
        set_={
            "request_hash": stmt.excluded.request_hash,
            "created_at": stmt.excluded.created_at,
            "status": None,
            "task_id": None,
            "resource": None,
            "response": None,
        },
        where=or_(
            KEYS.c.created_at < timestamp("expired_before"),
            and_(KEYS.c.status.is_(None), KEYS.c.created_at < timestamp("abandoned_before")),
        ),
    )
    return Query(stmt.returning(KEYS.c.key))


def key_record(conn: Connection, *, user_id: str, key: str) -> Row | None:
    return _KEY_RECORD.row(conn, owner=user_id, key_name=key)


def recording(
    dialect: str, resource: str, *, user_id: str, key: str, created: uuid.UUID
) -> tuple[Query, dict[str, Any]]:
    """The statement (and its parameters) that records the create of `created` under
    `key` as 201, to run right after the create, in its transaction: it records only if
    the create made the row."""
    params = {"owner": user_id, "key_name": key, "created_id": created, "response_status": 201}
    return _record(dialect, resource), params


@functools.cache
def _record(dialect: str, resource: str) -> Query:
    table, columns = RESOURCES[resource]
    made = and_(
        table.c.user_id == owner(), table.c.id == bindparam("created_id", type_=table.c.id.type)
    )
    row = select(cast(_encoded(dialect, columns), Text)).where(made).scalar_subquery()
    return Query(
        KEYS.update()
        .where(*_KEY, exists().where(made))
        .values(
            status=bindparam("response_status"),
            task_id=bindparam("created_id", type_=KEYS.c.task_id.type),
            resource=resource,
            response=row,
        )
    )


def _encoded(dialect: str, columns: Any) -> Any:
    """A row as the database encodes it in JSON (`replayed` decodes it)."""
    pairs: list[Any] = []
    for column in columns:
        value: Any = column
        if dialect == "sqlite" and column.key == "tags":
            value = func.json(column)  # stored as JSON text: embed it as an array
        pairs += [literal_column(f"'{column.key}'"), value]  # a name, not a parameter
    encode = func.json_build_object if dialect == "postgresql" else func.json_object
    return encode(*pairs)


def recorded_bulk(plan: Any, returned: Any) -> Any:
    """PostgreSQL: the step of a bulk statement that records its results under the
    request's key (`key_name`), in the same statement: per task asked for, in order,
    its verdict, the version it had, and the task as changed (`returned`'s row)."""
    task = (
        case((returned.c.id.is_not(None), _encoded("postgresql", returned.c)), else_=null())
        if len(returned.c) > 1
        else null()
    )
    result = func.json_build_object(
        literal_column("'asked'"),
        plan.c.asked,
        literal_column("'verdict'"),
        plan.c.verdict,
        literal_column("'old_version'"),
        plan.c.old_version,
        literal_column("'task'"),
        task,
    )
    results = (
        select(cast(func.json_agg(aggregate_order_by(result, plan.c.n)), Text))
        .select_from(plan.outerjoin(returned, returned.c.id == plan.c.id))
        .scalar_subquery()
    )
    return (
        KEYS.update()
        .where(*_KEY)
        .values(status=bindparam("response_status"), resource="bulk", response=results)
    )


def record_bulk(conn: Connection, *, user_id: str, key: str, results: Any) -> None:
    """SQLite: record a bulk request's results (as `recorded_bulk` encodes them)."""
    _RECORD_BULK.rowcount(
        conn, owner=user_id, key_name=key, response_status=200, results=json.dumps(results)
    )


def replayed(record: Mapping[str, Any]) -> Row:
    """The row a record holds, as the database returned it when it was created."""
    return replayed_row(json.loads(record["response"]))


def replayed_row(row: dict[str, Any]) -> Row:
    """A row the database encoded in JSON, decoded as it returns rows."""
    for name in _UUIDS:
        if row.get(name) is not None:
            row[name] = uuid.UUID(row[name])
    for name in _TIMES:
        if row.get(name) is not None:
            moment = datetime.fromisoformat(row[name])
            row[name] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if row.get("due_date") is not None:
        row["due_date"] = date.fromisoformat(row["due_date"])
    if "completed" in row:
        row["completed"] = bool(row["completed"])  # SQLite's JSON says 1 or 0
    return row


def release_key(conn: Connection, *, user_id: str, key: str) -> None:
    """Drop an in-flight claim whose create failed, so a retry can run."""
    _RELEASE.rowcount(conn, owner=user_id, key_name=key)


def purge_keys(conn: Connection) -> int:
    """Delete the keys older than their 24 hours; return how many."""
    return _PURGE.rowcount(conn, expired_before=now() - KEY_LIFETIME)


# Not named after the columns: SQLAlchemy keeps those names for the values.
_KEY = (KEYS.c.user_id == owner(), KEYS.c.key == bindparam("key_name"))
_KEY_RECORD = Query(select(KEYS).where(*_KEY))
_RELEASE = Query(delete(KEYS).where(*_KEY, KEYS.c.status.is_(None)))
_RECORD_BULK = Query(
    KEYS.update()
    .where(*_KEY)
    .values(status=bindparam("response_status"), resource="bulk", response=bindparam("results"))
)
_PURGE = Query(delete(KEYS).where(KEYS.c.created_at < timestamp("expired_before")))

"""Sync tokens: where a client's copy of the tasks and lists stands in the user's feed.

The design, and why it never skips a change:

- Every user has a change counter (`sync_positions.position`). Every write of the user's
  tasks or lists first locks the user's row, holding the lock to its commit
  (tasks_api/repository/writes.py), then stamps each row it changes with a number of its
  own above the counter (a task's or list's `change_position`, or the tombstone it leaves
  for each row it deletes) and moves the counter past them. A write of many rows (a list
  deleted with its tasks, a parent completed with its subtasks, a respacing) takes as
  many numbers; a write that changes nothing takes none.
- The lock is held until the write commits, so the next write of the same user waits
  for that commit before it reads the counter: one user's writes commit in the order of
  their positions. A reader's statement sees one snapshot; if it sees the counter at H,
  the writer that moved it to H has committed, and so has every writer of a lower
  position, so every row stamped H or lower is in that snapshot, in its latest state.
  Nothing can later appear below H. That is what a sequence or a timestamp cannot give:
  two writers take 10 and 11, 11 commits first, and a reader that passes 11 while 10 is
  still running skips 10 forever (tests/test_sync_race.py shows it with `updated_at`).
- Writes of different users never touch the same counter, and within a user the lock is
  always taken first, so two writes cannot deadlock. SQLite has one writer at a time
  (BEGIN IMMEDIATE around the write), so it is exact by construction.
- A page of changes is one statement: the tasks and lists after position P (indexes
  `(user_id, change_position)`) and the tombstones of each after it (keys
  `(user_id, position)`), each a range scan cut at `limit`, merged by position, joined to
  the counter's row so the answer also says how far it read (H). An empty sync costs the
  same for 20 tasks as for 100,000. Since every position is unique, an entry is never
  sent twice.

A token carries the position P the client has applied, the tombstone floor F (a first
sync reads rows only, so the ids deleted before it began are not its business), the
time T since which the client has been complete, and the user it is for, signed with
SECRET_KEY. A complete answer moves P to H and T to the time the read began; a page
with more after it moves P to its last entry and keeps T. Tombstones are purged 30 days
(and a margin) after the delete; a token whose T is older than 30 days is refused (410),
so no token that is accepted can need a purged tombstone.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from flask import current_app
from itsdangerous import BadData, URLSafeSerializer

from . import errors
from .repository.changes import NO_TOMBSTONES, TOMBSTONE_RETENTION, ChangesPage

_SALT = "tasks_api.sync-token"
_VERSION = 1
RETENTION = TOMBSTONE_RETENTION


@dataclass(frozen=True)
class Since:
    """Where a client stands: positions applied, tombstone floor, complete since when."""

    position: int
    floor: int
    complete_at: int  # seconds since the epoch

    @property
    def deleted_after(self) -> int:
        return max(self.position, self.floor)


def first() -> Since:
    """A client with nothing: every task, and no tombstone (until the first answer)."""
    return Since(position=0, floor=NO_TOMBSTONES, complete_at=int(time.time()))


def read(user_id: str, token: str, *, now: float | None = None) -> Since:
    """The token's position; 422 if it is not one of this user's, 410 if too old."""
    try:
        version, scope, position, floor, complete_at = _serializer().loads(token)
        since = Since(int(position), int(floor), int(complete_at))
    except (BadData, ValueError, TypeError):
        errors.validation_failed({"since": ["Not a sync token; start again without one."]})
    if version != _VERSION or scope != _scope(user_id):
        errors.validation_failed(
            {"since": ["This sync token belongs to another user; start again without one."]}
        )
    if (now if now is not None else time.time()) - since.complete_at > RETENTION.total_seconds():
        errors.gone(
            f"This sync token is older than {RETENTION.days} days and deletions that old are "
            "forgotten: start again without `since`."
        )
    return since


def following(since: Since, page: ChangesPage, *, more: bool, read_at: int) -> Since:
    """Where the client stands once it has applied `page` (read at `read_at`).

    With more to come, just past the page's last entry, still complete only since the
    old time; otherwise at the counter the read saw, complete as of the read.
    """
    floor = page.horizon if since.floor == NO_TOMBSTONES else since.floor
    if more:
        last = max(row["at"] for row in page.entries)
        return Since(position=last, floor=floor, complete_at=since.complete_at)
    return Since(position=page.horizon, floor=page.horizon, complete_at=read_at)


def issue(user_id: str, since: Since) -> str:
    return str(
        _serializer().dumps(
            [_VERSION, _scope(user_id), since.position, since.floor, since.complete_at]
        )
    )


def serializer(secret_key: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=_SALT)


def _scope(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


def _serializer() -> URLSafeSerializer:
    signer: URLSafeSerializer = current_app.extensions["tasks_api.sync_serializer"]
    return signer

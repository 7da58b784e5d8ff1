"""The sync feed: GET /api/{user_id}/tasks/changes (tasks_api/sync.py argues the design)."""

from __future__ import annotations

import time
from typing import Any

from flask import Response
from flask.views import MethodView

from .. import db, sync
from ..repository import changes as repository
from ..schemas.changes import ChangesQueryArgsSchema, ChangesSchema
from ..schemas.lists import dump_list
from ..schemas.tasks import dump_task
from .base import json_response, operation
from .tasks import tasks


@tasks.route("/changes")
class TaskChanges(MethodView):
    init_every_request = False

    @operation("listTaskChanges", 401, 403, 410, 422, 503)
    @tasks.arguments(ChangesQueryArgsSchema(), location="query")
    @tasks.response(200, ChangesSchema, description="What changed after the token.")
    def get(self, args: dict[str, Any], user_id: str) -> Response:
        """List what changed since the last sync

        Without `since`, every task and list, page by page; with it, every task and list
        created or changed after that point, in its current state, and the ids of those
        deleted since. Apply the answer (put each task and list by `id`, remove each
        deleted id), keep `next`, and call again with it, at once while `more` is true.
        A token older than 30 days is a 410: start again without `since`.
        """
        token, limit = args.get("since"), args["limit"]
        since = sync.first() if token is None else sync.read(user_id, token)
        read_at = int(time.time())  # before the read: a later delete is after it
        page = db.read(
            lambda conn: repository.changes(
                conn,
                user_id=user_id,
                after=since.position,
                deleted_after=since.deleted_after,
                limit=limit + 1,  # one more tells whether more wait
            )
        )
        more = len(page.entries) > limit
        kept = repository.ChangesPage(page.entries[:limit], page.horizon)
        following = sync.following(since, kept, more=more, read_at=read_at)
        by_kind: dict[str, list[Any]] = {kind: [] for kind in repository.KINDS}
        for row in kept.entries:
            by_kind[row["kind"]].append(row)
        body = {
            "changes": [dump_task(task) for task in by_kind["task"]],
            "deleted": [str(row["id"]) for row in by_kind["deleted_task"]],
            "lists": [dump_list(row) for row in by_kind["list"]],
            "deleted_lists": [str(row["id"]) for row in by_kind["deleted_list"]],
            "next": sync.issue(user_id, following),
            "more": more,
        }
        return json_response(body)

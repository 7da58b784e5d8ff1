"""The tasks: HTTP in, one repository call, HTTP out."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from flask import Response, url_for
from flask.views import MethodView

from .. import db, errors, pages
from ..repository import bulk, changing, creating, deleting, keys, listing, placing
from ..repository.tasks import get_task
from ..repository.writes import OK, Outcome, Row
from ..schemas.bulk import BulkResultsSchema, BulkSchema, expected_version
from ..schemas.fields import IdempotencyHeadersSchema
from ..schemas.tasks import (
    TaskCompletionSchema,
    TaskCreateSchema,
    TaskMoveSchema,
    TaskQueryArgsSchema,
    TaskSchema,
    TaskUpdateSchema,
    dump_task,
)
from .base import (
    ETAG_HEADER,
    LINK_HEADER,
    LOCATION_HEADER,
    REPLAYED_HEADER,
    api_blueprint,
    create_once,
    etag,
    fingerprint,
    if_match,
    json_response,
    not_modified,
    operation,
    recorded,
    refuse,
)

tasks = api_blueprint("tasks", __name__, "tasks", "A user's to-do tasks.")

TASK_ID_PARAMETER = {
    "in": "path",
    "name": "task_id",
    "required": True,
    "description": "The task's id. A malformed one is a 404, like a missing one.",
    "schema": {"type": "string", "format": "uuid"},
}


def _response(task: Row, status: int = 200) -> Response:
    headers = {"ETag": etag(task)}
    if "task_json" in task:  # PostgreSQL wrote it
        return Response(task["task_json"], status, headers, mimetype="application/json")
    if status == 201:
        headers["Location"] = url_for(".TaskById", user_id=task["user_id"], task_id=task["id"])
    return json_response(dump_task(task), status, headers)


def _written(outcome: Outcome) -> Response:
    if outcome.verdict != OK:
        refuse(outcome, "task")
    return _response(outcome.rows[0])


def _filters(args: Mapping[str, Any]) -> listing.Filters:
    """The list's filters; `completed` and `status` narrow the same state."""
    statuses: set[str] | None = None
    if "status" in args:
        statuses = set(args["status"])
    if "completed" in args:
        done = {"done"} if args["completed"] else {"todo", "in_progress"}
        statuses = done if statuses is None else statuses & done
    priorities = args.get("priority")
    return listing.Filters(
        statuses=statuses,
        priorities=None if priorities is None else set(priorities),
        tags=args.get("tag", ()),
        due_after=args.get("due_after"),
        due_before=args.get("due_before"),
        q=args.get("q"),
        list=args.get("list"),
        parent=args.get("parent"),
    )


@tasks.route("")
class Tasks(MethodView):
    init_every_request = False

    @operation("listTasks", 401, 403, 422, 503)
    @tasks.arguments(TaskQueryArgsSchema(), location="query")
    @tasks.response(
        200, TaskSchema(many=True), description="One page of the user's tasks.", headers=LINK_HEADER
    )
    def get(self, args: dict[str, Any], user_id: str) -> Response:
        """List a user's tasks

        Newest first unless `sort` says otherwise, one page at a time: follow the
        `Link` header's `next` URL until there is none. `sort=position` is the manual
        order of a list's top-level tasks (`list`) or of a task's subtasks (`parent`).
        """
        limit, after = args["limit"], pages.start_after(user_id, args)
        filters = _filters(args)
        rows = db.read(
            lambda conn: listing.list_tasks(
                conn,
                user_id=user_id,
                sort=args["sort"],
                filters=filters,
                limit=limit + 1,  # one more tells whether a next page exists
                after=after,
                encoded=True,
            )
        )
        page = rows[:limit]
        headers = {"Link": pages.next_link(user_id, args, page)} if len(rows) > limit else {}
        if page and "task_json" in page[0]:  # PostgreSQL wrote each task's JSON
            body = "[" + ",".join(task["task_json"] for task in page) + "]"
            return Response(body, headers=headers, mimetype="application/json")
        return json_response([dump_task(task) for task in page], headers=headers)

    @operation("createTask", 400, 401, 403, 409, 413, 415, 422, 503)
    @tasks.arguments(IdempotencyHeadersSchema(), location="headers")
    @tasks.arguments(TaskCreateSchema())
    @tasks.response(
        201,
        TaskSchema,
        description="The created task (or, for a repeated Idempotency-Key, the first response).",
        headers={**LOCATION_HEADER, **ETAG_HEADER, **REPLAYED_HEADER},
    )
    def post(self, headers: dict[str, Any], fields: dict[str, Any], user_id: str) -> Response:
        """Create a task

        It goes last in its list (`list_id`; none: the inbox), or last among the
        subtasks of `parent_id`, in that task's list. With an `Idempotency-Key`, a
        repeat of the request within 24 hours returns the first response and creates
        nothing; the same key with another body is a 422, and a repeat while the first is
        still running is a 409. Past a limit (100,000 tasks, 200 subtasks): 409.
        """
        task = creating.new_task(user_id=user_id, **fields)
        conn = db.connection()
        key = headers.get("idempotency_key")
        if key is None:
            outcome = creating.create_task(conn, task)
            if outcome.verdict != OK:
                refuse(outcome, "task")
            return _response(outcome.rows[0], 201)
        return create_once(
            "task",
            user_id=user_id,
            key=key,
            request_hash=fingerprint(fields),
            created=task["id"],
            create=lambda then: creating.create_task(conn, task, then=then),
            respond=lambda row: _response(row, 201),
        )


@tasks.route("/<uuid:task_id>", parameters=[TASK_ID_PARAMETER])
class TaskById(MethodView):
    init_every_request = False

    @operation("getTask", 304, 401, 403, 404, 422, 503, headers=("IfNoneMatch",))
    @tasks.response(200, TaskSchema, description="The task.", headers=ETAG_HEADER)
    def get(self, user_id: str, task_id: UUID) -> Response:
        """Get a task

        With `If-None-Match` naming the current version, answers 304 with no body.
        """
        task = db.read(lambda conn: get_task(conn, user_id=user_id, task_id=task_id, encoded=True))
        if task is None:
            errors.not_found("task")
        return not_modified(task) or _response(task)

    @operation("updateTask", 400, 401, 403, 404, 409, 412, 413, 415, 422, 503, headers=("IfMatch",))
    @tasks.arguments(TaskUpdateSchema())
    @tasks.response(200, TaskSchema, description="The task as updated.", headers=ETAG_HEADER)
    def put(self, changes: dict[str, Any], user_id: str, task_id: UUID) -> Response:
        """Update a task's fields

        Only the fields present in the body change; send at least one. A new `list_id`
        or `parent_id` moves the task, last among its new siblings. With `If-Match`,
        only if the task is still at that version (else 412, nothing changed).
        """
        return _written(
            changing.update_task(
                db.connection(),
                user_id=user_id,
                task_id=task_id,
                changes=changes,
                versions=if_match(),
            )
        )

    @operation("deleteTask", 401, 403, 404, 412, 422, 503, headers=("IfMatch",))
    @tasks.response(204, description="Deleted, with its subtasks.")
    def delete(self, user_id: str, task_id: UUID) -> tuple[str, int]:
        """Delete a task and its subtasks

        With `If-Match`, only if the task is still at that version (else 412).
        """
        outcome = deleting.delete_task(
            db.connection(), user_id=user_id, task_id=task_id, versions=if_match()
        )
        if outcome.verdict != OK:
            refuse(outcome, "task")
        return "", 204


@tasks.route("/<uuid:task_id>/complete", parameters=[TASK_ID_PARAMETER])
class TaskCompletion(MethodView):
    init_every_request = False

    @operation(
        "toggleTaskCompletion", 400, 401, 403, 404, 412, 413, 415, 422, 503, headers=("IfMatch",)
    )
    @tasks.arguments(TaskCompletionSchema(), required=False)
    @tasks.response(200, TaskSchema, description="The task as updated.", headers=ETAG_HEADER)
    def patch(self, body: dict[str, Any], user_id: str, task_id: UUID) -> Response:
        """Toggle a task's completion, or set it

        With no body (or `{}`), flips `completed`. With `{"completed": true|false}`,
        sets it; setting the value it already has changes nothing. Completing a task
        completes its open subtasks; reopening a subtask of a done task reopens that
        task. With `If-Match`, only if the task is still at that version (else 412).
        """
        return _written(
            changing.set_completed(
                db.connection(),
                user_id=user_id,
                task_id=task_id,
                completed=body.get("completed"),
                versions=if_match(),
            )
        )


@tasks.route("/<uuid:task_id>/move", parameters=[TASK_ID_PARAMETER])
class TaskMove(MethodView):
    init_every_request = False

    @operation("moveTask", 400, 401, 403, 404, 409, 412, 413, 415, 422, 503, headers=("IfMatch",))
    @tasks.arguments(TaskMoveSchema(), required=False)
    @tasks.response(200, TaskSchema, description="The task, in its new place.", headers=ETAG_HEADER)
    def post(self, body: dict[str, Any], user_id: str, task_id: UUID) -> Response:
        """Move a task in the manual order

        `{"after": id}` puts it right after that sibling (`null`: first), `{"before":
        id}` right before it; with neither, it goes last. `list_id` and `parent_id` in
        the same body move it to another list or parent, at that place. A move to where
        the task already is changes nothing. With `If-Match`, only if the task is still
        at that version (else 412).
        """
        order: placing.Order = "last"
        if "after" in body:
            order = "after" if body["after"] is not None else "first"
        elif "before" in body:
            order = "before"
        return _written(
            changing.move_task(
                db.connection(),
                user_id=user_id,
                task_id=task_id,
                order=order,
                sibling=body.get("after") or body.get("before"),
                to_list=body.get("list_id"),
                to_parent=body.get("parent_id"),
                list_given="list_id" in body,
                parent_given="parent_id" in body,
                versions=if_match(),
            )
        )


@tasks.route("/bulk")
class TaskBulk(MethodView):
    init_every_request = False

    @operation("bulkTasks", 400, 401, 403, 409, 413, 415, 422, 503)
    @tasks.arguments(IdempotencyHeadersSchema(), location="headers")
    @tasks.arguments(BulkSchema())
    @tasks.response(
        200,
        BulkResultsSchema,
        description="A result per id, in the order sent (for a repeated Idempotency-Key, "
        "the first response).",
        headers=REPLAYED_HEADER,
    )
    def post(self, headers: dict[str, Any], body: dict[str, Any], user_id: str) -> Response:
        """Apply one action to up to 100 tasks

        `complete`, `reopen`, `delete`, `move` (with `to`: to the end of that list or
        parent's subtasks, in the order the tasks had) or `update` (with `set`: the fields
        of a `PUT`). Each task changes as its own route would change it; a task asked
        for is changed by its own result only (not by a cascade from another one asked
        for), and every rule is checked against the tasks as they were when the request
        came. With `atomic: true`, all or nothing: if any id would not be 200 or 204,
        nothing changes and the answer is a 409 whose `errors` name each failing id.
        With an `Idempotency-Key`, as on create: a repeat within 24 hours returns the
        first response and changes nothing.
        """
        conn = db.connection()
        key = headers.get("idempotency_key")
        if key is not None:
            sent = {**body, "if_match": {str(k): v for k, v in body.get("if_match", {}).items()}}
            request_hash = fingerprint(sent, "bulk")
            if not keys.claim_key(conn, user_id=user_id, key=key, request_hash=request_hash):
                record = recorded(
                    conn, user_id=user_id, key=key, request_hash=request_hash, what="request"
                )
                response = _bulk_response(bulk.replayed(record), body)
                response.headers["Idempotent-Replayed"] = "true"
                return response
        expect = {task: expected_version(tag) for task, tag in body.get("if_match", {}).items()}
        try:
            results = bulk.run(
                conn,
                user_id=user_id,
                action=body["action"],
                ids=body["ids"],
                expect=expect,
                changes=body.get("to", body.get("set")),
                atomic=body["atomic"],
                key=key,
            )
        except Exception:
            if key is not None:
                with contextlib.suppress(Exception):
                    keys.release_key(conn, user_id=user_id, key=key)
            raise
        return _bulk_response(results, body, key=key, user_id=user_id)


def _bulk_response(
    results: list[bulk.Result], body: dict[str, Any], *, key: str | None = None, user_id: str = ""
) -> Response:
    """The results, or the 409 of an all-or-nothing request one task failed (which
    leaves its key free for a retry)."""
    answers = [_bulk_result(result, body["action"]) for result in results]
    failing = {
        answer["id"]: [
            f"{answer['status']}: {message}"
            for messages in answer.get("errors", {}).values()
            for message in messages
        ]
        for answer in answers
        if answer["status"] >= 400
    }
    if body["atomic"] and failing:
        if key is not None:
            keys.release_key(db.connection(), user_id=user_id, key=key)
        errors.nothing_changed(failing)
    return json_response({"results": answers})


def _bulk_result(result: bulk.Result, action: str) -> dict[str, Any]:
    if result.verdict == OK:
        if action == "delete":
            return {"id": str(result.id), "status": 204}
        assert result.task is not None  # an ok change returns its row
        return {"id": str(result.id), "status": 200, "task": dump_task(result.task)}
    if result.verdict == bulk.HELD:
        return {"id": str(result.id), "status": 200}
    status, problems = errors.outcome(result.verdict)
    return {"id": str(result.id), "status": status, "errors": problems}

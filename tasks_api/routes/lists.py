"""The lists: HTTP in, one repository call, HTTP out."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import Response, url_for
from flask.views import MethodView

from .. import db, errors, pages
from ..repository import lists as repository
from ..repository.writes import OK, Outcome, Row
from ..schemas.fields import IdempotencyHeadersSchema, PageArgsSchema
from ..schemas.lists import (
    ListCreateSchema,
    ListMoveSchema,
    ListSchema,
    ListUpdateSchema,
    dump_list,
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
    refuse,
)

lists = api_blueprint("lists", __name__, "lists", "A user's lists of tasks, in their order.")

LIST_ID_PARAMETER = {
    "in": "path",
    "name": "list_id",
    "required": True,
    "description": "The list's id. A malformed one is a 404, like a missing one.",
    "schema": {"type": "string", "format": "uuid"},
}


def _response(row: Row, user_id: str, status: int = 200) -> Response:
    headers = {"ETag": etag(row)}
    if status == 201:
        headers["Location"] = url_for(".ListById", user_id=user_id, list_id=row["id"])
    return json_response(dump_list(row), status, headers)


def _written(outcome: Outcome, user_id: str) -> Response:
    if outcome.verdict != OK:
        refuse(outcome, "list")
    return _response(outcome.rows[0], user_id)


@lists.route("")
class Lists(MethodView):
    init_every_request = False

    @operation("listLists", 401, 403, 422, 503)
    @lists.arguments(PageArgsSchema(), location="query")
    @lists.response(
        200, ListSchema(many=True), description="One page of the user's lists.", headers=LINK_HEADER
    )
    def get(self, args: dict[str, Any], user_id: str) -> Response:
        """List a user's lists

        In the user's order, one page at a time: follow the `Link` header's `next` URL
        until there is none. The inbox (tasks in no list) is not a list.
        """
        args = {**args, **pages.LISTS}
        limit, after = args["limit"], pages.start_after(user_id, args)
        rows = db.read(
            lambda conn: repository.list_lists(
                conn,
                user_id=user_id,
                limit=limit + 1,
                after=after,
            )
        )
        page = [{**row, "sort_key": row["position"]} for row in rows[:limit]]
        headers = {"Link": pages.next_link(user_id, args, page)} if len(rows) > limit else {}
        return json_response([dump_list(row) for row in page], headers=headers)

    @operation("createList", 400, 401, 403, 409, 413, 415, 422, 503)
    @lists.arguments(IdempotencyHeadersSchema(), location="headers")
    @lists.arguments(ListCreateSchema())
    @lists.response(
        201,
        ListSchema,
        description="The created list (or, for a repeated Idempotency-Key, the first response).",
        headers={**LOCATION_HEADER, **ETAG_HEADER, **REPLAYED_HEADER},
    )
    def post(self, headers: dict[str, Any], fields: dict[str, Any], user_id: str) -> Response:
        """Create a list

        It goes last in the user's order. `Idempotency-Key` works as on a task's create.
        A user has at most 1,000 lists: past that, 409.
        """
        row = repository.new_list(title=fields["title"])
        conn = db.connection()
        key = headers.get("idempotency_key")
        if key is None:
            outcome = repository.create_list(conn, user_id=user_id, row=row)
            if outcome.verdict != OK:
                refuse(outcome, "list")
            return _response(outcome.rows[0], user_id, 201)
        return create_once(
            "list",
            user_id=user_id,
            key=key,
            request_hash=fingerprint(fields, "list"),
            created=row["id"],
            create=lambda then: repository.create_list(conn, user_id=user_id, row=row, then=then),
            respond=lambda created: _response(created, user_id, 201),
        )


@lists.route("/<uuid:list_id>", parameters=[LIST_ID_PARAMETER])
class ListById(MethodView):
    init_every_request = False

    @operation("getList", 304, 401, 403, 404, 422, 503, headers=("IfNoneMatch",))
    @lists.response(200, ListSchema, description="The list.", headers=ETAG_HEADER)
    def get(self, user_id: str, list_id: UUID) -> Response:
        """Get a list

        `open_tasks` is exact as of this read. With `If-None-Match` naming the current
        version, 304: the list's own fields are unchanged (its count may not be).
        """
        row = db.read(lambda conn: repository.get_list(conn, user_id=user_id, list_id=list_id))
        if row is None:
            errors.not_found("list")
        return not_modified(row) or _response(row, user_id)

    @operation("updateList", 400, 401, 403, 404, 412, 413, 415, 422, 503, headers=("IfMatch",))
    @lists.arguments(ListUpdateSchema())
    @lists.response(200, ListSchema, description="The list as renamed.", headers=ETAG_HEADER)
    def put(self, fields: dict[str, Any], user_id: str, list_id: UUID) -> Response:
        """Rename a list

        With `If-Match`, only if the list is still at that version (else 412).
        """
        return _written(
            repository.rename_list(
                db.connection(),
                user_id=user_id,
                list_id=list_id,
                title=fields["title"],
                versions=if_match(),
            ),
            user_id,
        )

    @operation("deleteList", 401, 403, 404, 412, 422, 503, headers=("IfMatch",))
    @lists.response(204, description="Deleted, with every task in it.")
    def delete(self, user_id: str, list_id: UUID) -> tuple[str, int]:
        """Delete a list and every task in it

        Subtasks included, in one statement; the sync feed reports each as deleted.
        With `If-Match`, only if the list is still at that version (else 412).
        """
        outcome = repository.delete_list(
            db.connection(), user_id=user_id, list_id=list_id, versions=if_match()
        )
        if outcome.verdict != OK:
            refuse(outcome, "list")
        return "", 204


@lists.route("/<uuid:list_id>/move", parameters=[LIST_ID_PARAMETER])
class ListMove(MethodView):
    init_every_request = False

    @operation("moveList", 400, 401, 403, 404, 412, 413, 415, 422, 503, headers=("IfMatch",))
    @lists.arguments(ListMoveSchema(), required=False)
    @lists.response(200, ListSchema, description="The list, in its new place.", headers=ETAG_HEADER)
    def post(self, body: dict[str, Any], user_id: str, list_id: UUID) -> Response:
        """Move a list in the user's order

        `{"after": id}` puts it right after that list (`null`: first), `{"before": id}`
        right before it; with neither, it goes last. With `If-Match`, only if the list
        is still at that version (else 412).
        """
        order: repository.Order = "last"
        if "after" in body:
            order = "after" if body["after"] is not None else "first"
        elif "before" in body:
            order = "before"
        return _written(
            repository.move_list(
                db.connection(),
                user_id=user_id,
                list_id=list_id,
                order=order,
                sibling=body.get("after") or body.get("before"),
                versions=if_match(),
            ),
            user_id,
        )

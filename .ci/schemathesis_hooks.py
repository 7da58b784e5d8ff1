"""schemathesis hooks for .ci/run: each request acts as the user in its path.

The service under test verifies HS256 tokens with AUTH_JWT_SECRET, or in embedded mode
with the secret it generated in its instance folder ($INSTANCE_PATH, else instance/).
"""

import os
import re
import time
import uuid
from pathlib import Path

import jwt
import schemathesis

_UUID = re.compile(
    r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}"
)


def _secret() -> str:
    if os.environ.get("AUTH_JWT_SECRET"):
        return os.environ["AUTH_JWT_SECRET"]
    return (Path(os.environ.get("INSTANCE_PATH", "instance")) / "auth-secret").read_text().strip()


@schemathesis.auth(refresh_interval=None)
class PathUserToken:
    def get(self, case, context):  # type: ignore[no-untyped-def]
        user_id = (case.path_parameters or {}).get("user_id")
        if user_id is None:
            return None
        now = int(time.time())
        return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + 600}, _secret())

    def set(self, case, data, context):  # type: ignore[no-untyped-def]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def before_call(context, case, kwargs):  # type: ignore[no-untyped-def]
    # Some values only the server can make valid; tests/ covers what they do.
    # If-Match: any string fits its schema, but only the current ETag lets a write in;
    # the rest are a (correct) 412.
    if case.headers:
        case.headers.pop("If-Match", None)
    # Idempotency-Key: a key reused with another body is a (correct) 422, and generated
    # keys repeat ("0", "A"...), so each valid one is made unique.
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[\x20-\x7e]{1,255}", key):
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    # cursor and since (a sync token): valid only when this server issued them: no
    # generated one is, even when it fits the schema, so those are left out
    # (tests/test_listing.py and tests/test_sync.py cover bad ones). Ones that break the
    # schema (longer than its maxLength) go as generated, to be refused: by the app (422)
    # or, past 8 KiB of request line, by the server (a documented 414).
    for name, fits in (("cursor", range(0, 2049)), ("since", range(1, 1025))):
        token = (case.query or {}).get(name)
        if isinstance(token, str) and len(token) in fits:
            del case.query[name]
    # A task's or list's id in a body (list_id, parent_id, after, before) is valid only
    # when it names one of the user's, in the right place: a generated one is a
    # (correct) 422 naming the field. null (the inbox, top-level, first) stays.
    if isinstance(case.body, dict):
        for name in ("list_id", "parent_id", "after", "before"):
            if isinstance(case.body.get(name), str) and _UUID.fullmatch(case.body[name]):
                del case.body[name]
    # sort=position is the order within a list or a parent: without either it is a
    # (correct) 422 that the document cannot say.
    if (case.query or {}).get("sort") == "position" and not {"list", "parent"} & set(case.query):
        case.query["list"] = "inbox"
    # A bulk request's rules between members (API.md, "Many at once") are checked by the
    # app, each a (correct) 422 the document cannot say: each id once, if_match only for
    # ids sent, `to` exactly with move, `set` exactly with update.
    if isinstance(case.body, dict) and case.path.endswith("/tasks/bulk"):
        body = case.body
        ids = body.get("ids")
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            kept: dict[object, str] = {}
            for task_id in ids:
                kept.setdefault(_canonical(task_id), task_id)
            body["ids"] = list(kept.values())
            if isinstance(body.get("if_match"), dict):
                body["if_match"] = {
                    k: v for k, v in body["if_match"].items() if _canonical(k) in kept
                }
        action = body.get("action")
        for member, owner, default in (("to", "move", {}), ("set", "update", {"title": "x"})):
            if action == owner:
                body.setdefault(member, default)
            else:
                body.pop(member, None)


def _canonical(value: object) -> object:
    """A UUID's one spelling (the app reads `A-B` and `ab` alike), else the value."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return uuid.UUID(value)
    return value

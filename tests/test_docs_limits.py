"""Every limit the README and docs/api.md state is the one the service applies.

Each number is read from the docs' own sentences (a rephrased sentence fails here rather
than going unchecked) and compared with the OpenAPI document the app serves, or with the
code's constant where the document cannot say it.
"""

from __future__ import annotations

import re
import runpy
from typing import Any

import pytest
from gunicorn.config import Config

from tasks_api import MAX_BODY_BYTES, create_app, framing, positions
from tasks_api.config import Settings
from tasks_api.repository.changes import TOMBSTONE_RETENTION
from tasks_api.repository.keys import KEY_LIFETIME
from tasks_api.repository.lists import MAX_LISTS
from tasks_api.repository.tasks import MAX_SUBTASKS, MAX_TASKS
from tasks_api.schemas.fields import TAG_MAX
from tests.support import ROOT, SECRET

API_PAGE = (ROOT / "docs" / "api.md").read_text()
README = (ROOT / "README.md").read_text()
GUNICORN = {
    name: runpy.run_path(str(ROOT / "gunicorn.conf.py")).get(name, Config().settings[name].get())
    for name in ("limit_request_line", "limit_request_field_size", "limit_request_fields")
}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    instance = tmp_path_factory.mktemp("instance")
    app = create_app(Settings.from_env({"AUTH_JWT_SECRET": SECRET}), instance_path=str(instance))
    document: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    return document


def parameter(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    route = document["paths"][path]
    operation = route["get" if name != "Idempotency-Key" else "post"]
    both = route.get("parameters", []) + operation["parameters"]
    (found,) = [p for p in both if p["name"] == name]
    schema: dict[str, Any] = found["schema"]
    return schema


def field(document: dict[str, Any], schema: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][schema]["properties"][name]
    return found


def bounds(schema: dict[str, Any], low: str = "minLength", high: str = "maxLength") -> list[int]:
    return [schema.get(low, 0), schema[high]]


# (page, sentence with each number as a group, what the service says: from the OpenAPI
# document `d`, or from the code)
CLAIMS: list[tuple[str, str, Any]] = [
    ("api", r"`user_id` is (\d+) to (\d+) characters", lambda d: bounds(
        parameter(d, "/api/{user_id}/tasks", "user_id"))),
    ("api", r"\| `title` \| (\d+) to (\d+) characters", lambda d: bounds(
        field(d, "TaskCreate", "title"))),
    ("api", r"\| `description` \| up to (\d+) characters", lambda d: [
        field(d, "TaskCreate", "description")["maxLength"]]),
    ("api", r"\| `tags` \| (\d+) to (\d+) strings of (\d+) to (\d+) characters", lambda d: [
        *bounds(field(d, "TaskCreate", "tags"), "minItems", "maxItems"), 1, TAG_MAX]),
    ("api", r"\| `tag` \| repeated \(up to (\d+)\)", lambda d: [
        parameter(d, "/api/{user_id}/tasks", "tag")["maxItems"]]),
    ("api", r"`tag=` in a query takes up to (\d+) values", lambda d: [
        parameter(d, "/api/{user_id}/tasks", "tag")["maxItems"]]),
    ("api", r"\| `q` \| (\d+) to (\d+) characters", lambda d: bounds(
        parameter(d, "/api/{user_id}/tasks", "q"))),
    ("api", r"\| `limit` \| page size, (\d+) to (\d+), default (\d+)", lambda d: [
        *bounds(parameter(d, "/api/{user_id}/tasks", "limit"), "minimum", "maximum"),
        parameter(d, "/api/{user_id}/tasks", "limit")["default"]]),
    ("api", r"`GET /lists` pages like tasks \(`limit` (\d+) to (\d+), default (\d+)", lambda d: [
        *bounds(parameter(d, "/api/{user_id}/lists", "limit"), "minimum", "maximum"),
        parameter(d, "/api/{user_id}/lists", "limit")["default"]]),
    ("api", r"a `title` \((\d+) to (\d+) characters once trimmed", lambda d: bounds(
        field(d, "ListCreate", "title"))),
    ("api", r"`limit` at a time \((\d+) to (\d+), default (\d+)\)", lambda d: [
        *bounds(parameter(d, "/api/{user_id}/tasks/changes", "limit"), "minimum", "maximum"),
        parameter(d, "/api/{user_id}/tasks/changes", "limit")["default"]]),
    ("api", r"`ids`: (\d+) to (\d+) distinct task ids", lambda d: bounds(
        field(d, "Bulk", "ids"), "minItems", "maxItems")),
    ("api", r"one action on up to (\d+) tasks", lambda d: [
        field(d, "Bulk", "ids")["maxItems"]]),
    ("api", r"`Idempotency-Key` \(up to (\d+) printable ASCII characters", lambda d: [
        int(re.findall(r"\{1,(\d+)\}", parameter(d, "/api/{user_id}/tasks",
                                               "Idempotency-Key")["pattern"])[0])]),
    ("api", r"a body over (\d+) KiB", lambda d: [MAX_BODY_BYTES // 1024]),
    ("api", r"a request line over (\d+) KiB", lambda d: [
        (GUNICORN["limit_request_line"] + 2) // 1024]),
    ("api", r"a header field over (\d+) KiB, more than (\d+) header fields, or a head over "
     r"(\d+) KiB in all", lambda d: [
        (GUNICORN["limit_request_field_size"] - 2) // 1024, GUNICORN["limit_request_fields"],
        framing.HEAD_LIMIT // 1024]),
    ("api", r"At most ([\d,]+) tasks \(subtasks included\) and ([\d,]+) lists, besides (\d+) "
     r"tags a task and (\d+)\s+subtasks a parent", lambda d: [
        MAX_TASKS, MAX_LISTS, field(d, "TaskCreate", "tags")["maxItems"], MAX_SUBTASKS]),
    ("api", r"\(([\d,]+) tasks or ([\d,]+) lists a user, (\d+) subtasks a task", lambda d: [
        MAX_TASKS, MAX_LISTS, MAX_SUBTASKS]),
    ("api", r"A task has at most (\d+) subtasks", lambda d: [MAX_SUBTASKS]),
    ("api", r"none is longer than (\d+) characters", lambda d: [positions.MAX_LENGTH]),
    ("api", r"before its keys would pass (\d+) characters", lambda d: [positions.MAX_LENGTH]),
    ("api", r"Deletions are remembered for (\d+) days", lambda d: [TOMBSTONE_RETENTION.days]),
    ("api", r"The same key and body within (\d+) hours", lambda d: [
        KEY_LIFETIME.total_seconds() // 3600]),
    ("readme", r"A user has at most ([\d,]+) tasks and ([\d,]+) lists", lambda d: [
        MAX_TASKS, MAX_LISTS]),
    ("readme", r"List the tasks, newest first → 200 \(a page of up to (\d+);", lambda d: [
        parameter(d, "/api/{user_id}/tasks", "limit")["default"]]),
    ("readme", r"update up to (\d+) tasks in one request", lambda d: [
        field(d, "Bulk", "ids")["maxItems"]]),
]  # fmt: skip

PAGES = {"api": API_PAGE, "readme": README}


def stated(page: str, sentence: str) -> list[int]:
    """The numbers of the one place the page says this (whitespace as it wraps)."""
    pattern = re.compile(sentence.replace(" ", r"\s+").replace(r"\s+\s+", r"\s+"))
    found = pattern.findall(PAGES[page])
    assert len(found) == 1, f"{page}: expected one `{sentence}`, found {len(found)}"
    groups = found[0] if isinstance(found[0], tuple) else (found[0],)
    return [int(number.replace(",", "")) for number in groups]


@pytest.mark.parametrize(("page", "sentence", "truth"), CLAIMS, ids=[c[1][:40] for c in CLAIMS])
def test_a_limit_the_docs_state_is_the_one_the_service_applies(
    openapi: dict[str, Any], page: str, sentence: str, truth: Any
) -> None:
    assert stated(page, sentence) == [int(n) for n in truth(openapi)]


def test_every_length_or_size_in_docs_api_is_checked_above() -> None:
    """A new limit in a sentence no claim reads fails here until a claim reads it."""
    checked = [
        m.span()
        for page, sentence, _ in CLAIMS
        if page == "api"
        for m in re.finditer(sentence.replace(" ", r"\s+"), API_PAGE)
    ]
    prose = re.sub(r"^```.*?^```", lambda m: " " * len(m[0]), API_PAGE, flags=re.M | re.S)
    unchecked = [
        m[0]
        for m in re.finditer(r"\b\d[\d,]*\s+(?:characters|KiB|strings|tags|subtasks)\b", prose)
        if not any(start <= m.start() < end for start, end in checked)
    ]
    assert unchecked == []

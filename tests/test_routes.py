"""The six task endpoints, as a client sees them."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import assert_problem

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TASK_KEYS = [
    "id",
    "user_id",
    "title",
    "description",
    "completed",
    "status",
    "priority",
    "due_date",
    "tags",
    "list_id",
    "parent_id",
    "position",
    "completed_at",
    "created_at",
    "updated_at",
    "version",
]


def parse(timestamp: str) -> datetime:
    assert TIMESTAMP.match(timestamp), timestamp
    return datetime.fromisoformat(timestamp)


def list_of(client: FlaskClient, tasks_url: str) -> list[dict[str, Any]]:
    response = client.get(tasks_url)
    assert response.status_code == 200
    body: list[dict[str, Any]] = response.get_json()
    return body


# --- create -------------------------------------------------------------------------


def test_create_returns_the_task_and_its_location(
    client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    response = client.post(tasks_url, json={"title": "  Buy milk \n"})

    assert response.status_code == 201
    assert response.mimetype == "application/json"
    task = response.get_json()
    assert list(task) == TASK_KEYS
    assert uuid.UUID(task["id"]).version == 4
    assert task["user_id"] == user_id
    assert task["title"] == "Buy milk"
    assert task["description"] is None
    assert task["completed"] is False
    assert task["status"] == "todo"
    assert task["priority"] == "medium"
    assert task["due_date"] is None
    assert task["tags"] == []
    assert (task["list_id"], task["parent_id"]) == (None, None)  # in the inbox, top-level
    assert isinstance(task["position"], str) and task["position"]
    assert task["completed_at"] is None
    assert task["version"] == 1
    assert parse(task["created_at"]) == parse(task["updated_at"])
    assert response.headers["Location"] == f"{tasks_url}/{task['id']}"
    assert client.get(response.headers["Location"]).get_json() == task


def test_text_goes_out_as_utf_8_not_escapes(client: FlaskClient, tasks_url: str) -> None:
    # \uXXXX escapes are valid JSON, but made a page of non-Latin text up to 6x larger.
    title, tag = "Café ☕ 買い物 — Ελληνικά", "über"
    sent = {"title": title, "description": "ⓓ" * 100, "tags": [tag]}
    replay = {"Idempotency-Key": f"utf8-{uuid.uuid4()}"}
    created = client.post(tasks_url, json=sent, headers=replay)
    again = client.post(tasks_url, json=sent, headers=replay)
    answers = [
        created,
        again,
        client.get(tasks_url),
        client.get(f"{tasks_url}/{created.get_json()['id']}"),
        client.get(f"{tasks_url}/changes"),
    ]

    for response in answers:
        assert response.status_code in (200, 201), response.status
        assert title.encode() in response.data and b"\\u" not in response.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert created.get_json()["title"] == title and created.get_json()["tags"] == [tag]


def test_a_lone_surrogate_echoed_in_an_error_is_escaped_not_a_500(
    client: FlaskClient, tasks_url: str
) -> None:
    # Not UTF-8: the one text that goes out escaped (a field named after it, here).
    body = b'{"title": "x", "\\ud800": 1}'
    response = client.post(tasks_url, data=body, content_type="application/json")

    problem = assert_problem(response, 422)
    assert list(problem["errors"]) == ["\ud800"] and b"\\ud800" in response.data


def test_create_completed_sets_completed_at(client: FlaskClient, tasks_url: str) -> None:
    task = client.post(
        tasks_url, json={"title": "Done", "description": "", "completed": True}
    ).get_json()

    assert task["completed"] is True
    assert task["description"] == ""
    assert task["completed_at"] == task["created_at"]


def test_title_of_500_characters_after_trimming_is_accepted(
    client: FlaskClient, tasks_url: str
) -> None:
    title = "é" * 500
    response = client.post(tasks_url, json={"title": f"   {title}  ", "description": "d" * 8000})

    assert response.status_code == 201
    assert response.get_json()["title"] == title


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   \t\n"}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"title": None}, "title"),
        ({"title": 42}, "title"),
        ({"title": ["a"]}, "title"),
        ({"title": "a\x00b"}, "title"),
        ({"title": "\ud800"}, "title"),
        ({"title": "ok", "description": "d" * 8001}, "description"),
        ({"title": "ok", "description": 5}, "description"),
        ({"title": "ok", "description": "a\x00"}, "description"),
        ({"title": "ok", "completed": "true"}, "completed"),
        ({"title": "ok", "completed": 1}, "completed"),
        ({"title": "ok", "completed": None}, "completed"),
        ({"title": "ok", "priority": "HIGH"}, "priority"),
        ({"title": "ok", "colour": "red"}, "colour"),
        ({"title": "ok", "id": str(uuid.uuid4())}, "id"),
        ({"title": "ok", "user_id": "someone-else"}, "user_id"),
        ({"title": "ok", "version": 7}, "version"),
        ({"title": "ok", "created_at": "2026-01-01T00:00:00Z"}, "created_at"),
        ({"title": "ok", "updated_at": "2026-01-01T00:00:00Z"}, "updated_at"),
        ({"title": "ok", "completed_at": None}, "completed_at"),
    ],
)
def test_create_rejects_invalid_fields_and_stores_nothing(
    client: FlaskClient, tasks_url: str, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(client.post(tasks_url, json=body), 422)

    assert list(problem["errors"]) == [field]
    assert all(isinstance(m, str) for m in problem["errors"][field])
    assert list_of(client, tasks_url) == []


# --- list and read ------------------------------------------------------------------


def test_list_is_newest_first_and_only_the_users_own(client: FlaskClient, tasks_url: str) -> None:
    titles = [f"task {n}" for n in range(5)]
    for title in titles:
        assert client.post(tasks_url, json={"title": title}).status_code == 201
    other = f"/api/other-{uuid.uuid4().hex}/tasks"
    client.post(other, json={"title": "not yours"})

    listed = list_of(client, tasks_url)

    assert [t["title"] for t in listed] == titles[::-1]
    assert all(list(t) == TASK_KEYS for t in listed)


def test_list_of_a_user_without_tasks_is_empty(client: FlaskClient, tasks_url: str) -> None:
    assert list_of(client, tasks_url) == []


def test_get_returns_the_task(client: FlaskClient, task_url: str, task: dict[str, Any]) -> None:
    response = client.get(task_url)

    assert response.status_code == 200
    assert response.get_json() == task


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_another_users_task_is_a_plain_404(
    client: FlaskClient, task: dict[str, Any], task_url: str, method: str
) -> None:
    stranger = f"/api/stranger-{uuid.uuid4().hex}/tasks/{task['id']}"
    url = f"{stranger}/complete" if method == "PATCH" else stranger
    body = {"title": "mine now"} if method == "PUT" else None

    response = client.open(url, method=method, json=body)

    problem = assert_problem(response, 404)
    missing = assert_problem(
        client.open(url.replace(task["id"], str(uuid.uuid4())), method=method, json=body), 404
    )
    assert problem["detail"] == missing["detail"]
    assert client.get(task_url).get_json() == task


@pytest.mark.parametrize(
    "task_id", ["42", "not-a-uuid", "6f1c2a9e-8a0b-4a53-9f57", "6f1c2a9e8a0b4a539f573c1e4f2b9d1z"]
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_malformed_task_id_is_404(
    client: FlaskClient, tasks_url: str, task_id: str, method: str
) -> None:
    assert_problem(client.open(f"{tasks_url}/{task_id}", method=method, json={"title": "x"}), 404)


# --- update -------------------------------------------------------------------------


def test_put_changes_only_the_fields_sent(
    client: FlaskClient, task_url: str, task: dict[str, Any]
) -> None:
    response = client.put(task_url, json={"title": "  Buy oat milk  "})

    assert response.status_code == 200
    updated = response.get_json()
    assert updated["title"] == "Buy oat milk"
    assert updated["description"] == task["description"]
    assert updated["completed"] is False
    assert updated["version"] == 2
    assert updated["created_at"] == task["created_at"]
    assert parse(updated["updated_at"]) > parse(task["updated_at"])
    assert client.get(task_url).get_json() == updated


def test_put_can_clear_the_description_and_complete(client: FlaskClient, task_url: str) -> None:
    updated = client.put(task_url, json={"description": None, "completed": True}).get_json()

    assert updated["description"] is None
    assert updated["completed"] is True
    assert updated["completed_at"] == updated["updated_at"]
    assert updated["version"] == 2

    reopened = client.put(task_url, json={"completed": False}).get_json()
    assert reopened["completed"] is False
    assert reopened["completed_at"] is None
    assert reopened["version"] == 3


def test_repeating_a_put_changes_nothing(client: FlaskClient, task_url: str) -> None:
    first = client.put(task_url, json={"title": "Same", "completed": True}).get_json()
    second = client.put(task_url, json={"title": "Same", "completed": True})

    assert second.status_code == 200
    assert second.get_json() == first


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "json"),
        ({"title": None}, "title"),
        ({"title": "  "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"description": "d" * 8001}, "description"),
        ({"completed": "false"}, "completed"),
        ({"completed": 0}, "completed"),
        ({"version": 3}, "version"),
        ({"id": str(uuid.uuid4())}, "id"),
        ({"title": "ok", "colour": "red"}, "colour"),
    ],
)
def test_put_rejects_invalid_bodies_and_changes_nothing(
    client: FlaskClient, task_url: str, task: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(client.put(task_url, json=body), 422)

    assert list(problem["errors"]) == [field]
    assert client.get(task_url).get_json() == task


def test_put_without_a_body_is_422(client: FlaskClient, task_url: str) -> None:
    problem = assert_problem(client.put(task_url), 422)
    assert list(problem["errors"]) == ["json"]


# --- delete -------------------------------------------------------------------------


def test_delete_removes_the_task(client: FlaskClient, task_url: str, tasks_url: str) -> None:
    response = client.delete(task_url)

    assert response.status_code == 204
    assert response.data == b""
    assert_problem(client.get(task_url), 404)
    assert_problem(client.delete(task_url), 404)
    assert list_of(client, tasks_url) == []


# --- completion ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "send",
    [
        {},
        {"content_type": "application/json"},
        {"data": "", "content_type": "text/plain"},
        {"json": {}},
    ],
    ids=["no-body", "json-type-empty-body", "text-type-empty-body", "empty-object"],
)
def test_patch_complete_without_a_value_toggles(
    client: FlaskClient, task_url: str, task: dict[str, Any], send: dict[str, Any]
) -> None:
    done = client.patch(f"{task_url}/complete", **send)
    assert done.status_code == 200
    done_task = done.get_json()
    assert done_task["completed"] is True
    assert done_task["completed_at"] == done_task["updated_at"]
    assert done_task["version"] == 2

    undone = client.patch(f"{task_url}/complete", **send).get_json()
    assert undone["completed"] is False
    assert undone["completed_at"] is None
    assert undone["version"] == 3
    assert client.get(task_url).get_json() == undone


def test_patch_complete_with_a_value_sets_it_idempotently(
    client: FlaskClient, task_url: str
) -> None:
    first = client.patch(f"{task_url}/complete", json={"completed": True}).get_json()
    again = client.patch(f"{task_url}/complete", json={"completed": True}).get_json()

    assert first["completed"] is True
    assert first["version"] == 2
    assert again == first

    cleared = client.patch(f"{task_url}/complete", json={"completed": False}).get_json()
    assert cleared["completed"] is False
    assert cleared["completed_at"] is None
    assert cleared["version"] == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"completed": None}, "completed"),
        ({"completed": "yes"}, "completed"),
        ({"completed": 1}, "completed"),
        ({"done": True}, "done"),
        ({"completed": True, "version": 2}, "version"),
    ],
)
def test_patch_complete_rejects_invalid_bodies(
    client: FlaskClient, task_url: str, task: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(client.patch(f"{task_url}/complete", json=body), 422)

    assert list(problem["errors"]) == [field]
    assert client.get(task_url).get_json() == task


# --- user ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        "alice",
        "google-oauth2|1234567890",
        "6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10",
        "user_2abcDEF.x@example.com:1",
        "u" * 128,
    ],
)
def test_user_ids_from_common_auth_providers_are_accepted(
    client: FlaskClient, user_id: str
) -> None:
    created = client.post(f"/api/{user_id}/tasks", json={"title": "mine"})

    assert created.status_code == 201
    assert created.get_json()["user_id"] == user_id
    client.delete(created.headers["Location"])


@pytest.mark.parametrize(
    "user_id", ["u" * 129, "has%20space", "caf%C3%A9", "semi;colon", "quote'", "%00", "a+b"]
)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("POST", ""),
        ("GET", "/6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10"),
        ("PUT", "/6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10"),
        ("DELETE", "/6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10"),
        ("PATCH", "/6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10/complete"),
    ],
)
def test_invalid_user_id_is_422_on_every_route(
    client: FlaskClient, user_id: str, method: str, suffix: str
) -> None:
    response = client.open(f"/api/{user_id}/tasks{suffix}", method=method, json={"title": "x"})

    problem = assert_problem(response, 422)
    assert list(problem["errors"]) == ["user_id"]


def test_a_coroutine_function_is_still_run_as_one(app: Flask) -> None:
    """The app keeps whether each hook or view is a coroutine (tasks_api.App.ensure_sync):
    a plain one is called as it is, an `async def` one still goes to Flask's async support
    (which needs the `async` extra this project does not install), bound or not; a
    callable that cannot be a key is asked each time."""

    def plain() -> None: ...

    async def coroutine() -> None: ...

    class View:
        async def get(self) -> None: ...

    @dataclasses.dataclass  # eq=True: not hashable
    class Handler:
        def __call__(self) -> None: ...

    handler = Handler()
    for callable_ in (plain, plain, handler):
        assert app.ensure_sync(callable_) is callable_
    for async_callable in (coroutine, View().get, View().get):
        with pytest.raises(RuntimeError, match="'async' extra"):
            app.ensure_sync(async_callable)

"""Every error case of API.md: status, problem+json body, headers, and nothing stored."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks_api import create_app
from tasks_api.config import Settings
from tests.support import REQUIRED, UserClient, assert_problem


def stored(client: FlaskClient, tasks_url: str) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = client.get(tasks_url).get_json()
    return body


# --- 400 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        '{"title": "unterminated',
        "{'title': 'single quotes'}",
        '{"title": "x",}',
        "title=x",
        b"\xff\xfe\x00garbage",
        "[" * 30_000 + "]" * 30_000,
    ],
    ids=["truncated", "single-quotes", "trailing-comma", "form-text", "bad-bytes", "deep"],
)
def test_malformed_json_is_400(client: FlaskClient, tasks_url: str, data: str | bytes) -> None:
    response = client.post(tasks_url, data=data, content_type="application/json")

    assert_problem(response, 400)
    assert stored(client, tasks_url) == []


@pytest.mark.parametrize("data", ["[]", '[{"title": "x"}]', '"x"', "1", "null", "true"])
def test_body_that_is_not_an_object_is_400(client: FlaskClient, tasks_url: str, data: str) -> None:
    assert_problem(client.post(tasks_url, data=data, content_type="application/json"), 400)
    assert stored(client, tasks_url) == []


def test_malformed_json_on_put_and_patch_is_400(
    client: FlaskClient, task_url: str, task: dict[str, Any]
) -> None:
    assert_problem(client.put(task_url, data="{", content_type="application/json"), 400)
    assert_problem(
        client.patch(f"{task_url}/complete", data="[true]", content_type="application/json"), 400
    )
    assert client.get(task_url).get_json() == task


# --- 413 ----------------------------------------------------------------------------


def test_body_over_64_kib_is_413(client: FlaskClient, tasks_url: str) -> None:
    body = '{"title": "big", "description": "' + "x" * (64 * 1024) + '"}'

    problem = assert_problem(
        client.post(tasks_url, data=body, content_type="application/json"), 413
    )

    assert problem["title"] == "Content Too Large"
    assert problem["detail"] == "The body is larger than 64 KiB."
    assert stored(client, tasks_url) == []


def test_body_of_exactly_64_kib_is_read(client: FlaskClient, tasks_url: str) -> None:
    body = '{"title": "big", "description": "' + "x" * (64 * 1024) + '"}'
    body = body[: 64 * 1024 - 2] + '"}'

    # Read and validated (description too long), not refused for its size.
    assert_problem(client.post(tasks_url, data=body, content_type="application/json"), 422)


# --- 422: a detail a person can act on ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "more"),
    [
        ("POST", "", {"title": ""}, "title", 0),
        ("POST", "", {"title": 5, "description": 7, "completed": "yes"}, "title", 2),
        ("POST", "", {"title": "x", "completed": "yes"}, "completed", 0),
        ("POST", "", {"title": "x", "id": "mine"}, "id", 0),
        ("POST", "", {"title": "x", "bogus": 1}, "bogus", 0),
        ("POST", "", {"title": 5, "bogus": 1}, "title", 1),
        ("PUT", "/{id}", {}, "json", 0),
        ("GET", "?limit=0", None, "limit", 0),
        ("GET", "?limit=0&sort=sideways", None, "sort", 1),
        ("GET", "?cursor=forged", None, "cursor", 0),
    ],
)
def test_a_422_detail_names_the_first_problem_and_counts_the_rest(
    client: FlaskClient,
    tasks_url: str,
    task: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
    more: int,
) -> None:
    response = client.open(tasks_url + path.format(id=task["id"]), method=method, json=body)

    problem = assert_problem(response, 422)
    first = next(iter(problem["errors"]))
    assert first == field
    expected = f"{field}: {problem['errors'][field][0]}"
    if more:
        expected += f" (and {more} more problem{'s' if more > 1 else ''}; see `errors`)"
    assert problem["detail"] == expected
    assert sum(len(messages) for messages in problem["errors"].values()) == more + 1
    assert stored(client, tasks_url) == [task]


def test_a_422_for_the_path_names_the_user_id(client: FlaskClient) -> None:
    problem = assert_problem(client.get("/api/has%20space/tasks"), 422)

    assert problem["detail"].startswith("user_id: Must be 1 to 128 characters")


# --- 415 and bodies that count as none ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"title": "x"}', "text/plain"),
        ("title=x", "application/x-www-form-urlencoded"),
        ('{"title": "x"}', "application/xml"),
        ('{"title": "x"}', ""),
    ],
)
def test_a_body_that_is_not_json_is_415(
    client: FlaskClient, tasks_url: str, data: str, content_type: str
) -> None:
    response = client.post(tasks_url, data=data, headers={"Content-Type": content_type})

    assert_problem(response, 415)
    assert stored(client, tasks_url) == []


def test_json_suffix_media_types_are_json(client: FlaskClient, tasks_url: str) -> None:
    response = client.post(
        tasks_url, data='{"title": "x"}', content_type="application/merge-patch+json"
    )
    assert response.status_code == 201


def test_non_json_body_on_patch_complete_is_415(
    client: FlaskClient, task_url: str, task: dict[str, Any]
) -> None:
    response = client.patch(
        f"{task_url}/complete", data="completed=true", content_type="text/plain"
    )

    assert_problem(response, 415)
    assert client.get(task_url).get_json() == task


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_an_empty_body_is_no_body_whatever_its_type(
    client: FlaskClient, task_url: str, tasks_url: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}

    assert client.get(tasks_url, headers=headers).status_code == 200
    assert client.get(task_url, headers=headers).status_code == 200
    assert client.patch(f"{task_url}/complete", headers=headers).status_code == 200
    # POST and PUT without a body miss their required fields: 422, never 400 or 415.
    assert_problem(client.post(tasks_url, headers=headers), 422)
    assert_problem(client.put(task_url, headers=headers), 422)
    assert client.delete(task_url, headers=headers).status_code == 204


# --- 404 and 405 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/api", "/api/alice", "/api/alice/tasks/", "/api/alice/todos"]
)
def test_unknown_route_is_404(client: FlaskClient, path: str) -> None:
    assert_problem(client.get(path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/api/alice/tasks", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("PATCH", "/api/alice/tasks", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("POST", f"/api/alice/tasks/{uuid.uuid4()}", {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}),
        ("GET", f"/api/alice/tasks/{uuid.uuid4()}/complete", {"OPTIONS", "PATCH"}),
        ("PUT", f"/api/alice/tasks/{uuid.uuid4()}/complete", {"OPTIONS", "PATCH"}),
        ("POST", "/health", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.open(path, method=method)

    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


# --- 500 ----------------------------------------------------------------------------


@pytest.fixture
def failing_app(tmp_path: Path) -> Flask:
    app = create_app(Settings.from_env({}), instance_path=str(tmp_path))

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret-token-123 SELECT * FROM tasks")

    return app


def test_unexpected_failure_is_500_with_a_request_id_and_no_internals(
    failing_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tasks_api"):
        response = failing_app.test_client().get("/boom")

    problem = assert_problem(response, 500)
    text = response.get_data(as_text=True)
    assert "secret-token-123" not in text and "SELECT" not in text and "RuntimeError" not in text
    assert problem["request_id"] == response.headers["X-Request-ID"]
    logged = [r for r in caplog.records if problem["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_the_routers_request_id_is_kept(failing_app: Flask) -> None:
    response = failing_app.test_client().get("/boom", headers={"X-Request-ID": "router-abc.123"})

    assert assert_problem(response, 500)["request_id"] == "router-abc.123"
    assert response.headers["X-Request-ID"] == "router-abc.123"


@pytest.mark.parametrize("sent", ["", "has space", "x" * 129, "<script>"])
def test_an_unusable_request_id_is_replaced(client: FlaskClient, sent: str) -> None:
    response = client.get("/health", headers={"X-Request-ID": sent})

    assert response.headers["X-Request-ID"] != sent
    assert len(response.headers["X-Request-ID"]) == 32


# --- 503 ----------------------------------------------------------------------------


@pytest.fixture
def unreachable(tmp_path: Path) -> FlaskClient:
    """An app whose PostgreSQL refuses connections (nothing listens on port 1)."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/tasks",
            "DB_POOL_TIMEOUT": "2",
            **REQUIRED,
        }
    )
    app = create_app(settings, instance_path=str(tmp_path))
    app.test_client_class = UserClient
    return app.test_client()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/alice/tasks", None),
        ("POST", "/api/alice/tasks", {"title": "x"}),
        ("GET", f"/api/alice/tasks/{uuid.uuid4()}", None),
        ("PUT", f"/api/alice/tasks/{uuid.uuid4()}", {"title": "x"}),
        ("DELETE", f"/api/alice/tasks/{uuid.uuid4()}", None),
        ("PATCH", f"/api/alice/tasks/{uuid.uuid4()}/complete", None),
        ("GET", "/health/ready", None),
    ],
)
def test_unreachable_database_is_503_with_retry_after(
    unreachable: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response = unreachable.open(path, method=method, json=body)

    problem = assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert "hunter2" not in response.get_data(as_text=True)
    assert "hunter2" not in caplog.text


def test_an_outage_is_logged_once_with_the_drivers_reason(
    unreachable: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tasks_api"):
        for _ in range(5):
            assert unreachable.get("/api/alice/tasks").status_code == 503

    lines = [r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(lines) == 1
    assert 'connection to server at "127.0.0.1", port 1 failed: Connection refused' in lines[0]
    assert "hunter2" not in caplog.text


def test_liveness_does_not_need_the_database(unreachable: FlaskClient) -> None:
    response = unreachable.get("/health")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readiness_with_the_database_up(client: FlaskClient) -> None:
    response = client.get("/health/ready")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}

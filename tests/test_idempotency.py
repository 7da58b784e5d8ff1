"""Idempotency-Key on create: retries, mismatches, requests in flight, many instances."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from tasks_api.models import KEYS
from tests.support import (
    assert_problem,
    token_for,
)


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def tasks_of(client: FlaskClient, tasks_url: str) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = client.get(tasks_url).get_json()
    return body


def test_a_repeat_returns_the_first_response_and_creates_nothing(
    client: FlaskClient, tasks_url: str
) -> None:
    key = str(uuid.uuid4())
    first = client.post(tasks_url, json={"title": "Pay rent"}, headers=keyed(key))
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    client.put(first.headers["Location"], json={"title": "changed since"})

    again = client.post(tasks_url, json={"title": "Pay rent"}, headers=keyed(key))

    assert again.status_code == 201
    assert again.data == first.data
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"] == '"1"'
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(tasks_of(client, tasks_url)) == 1


def test_the_same_key_with_another_body_is_422(client: FlaskClient, tasks_url: str) -> None:
    client.post(tasks_url, json={"title": "Pay rent"}, headers=keyed("k-1"))

    problem = assert_problem(
        client.post(tasks_url, json={"title": "Pay rent twice"}, headers=keyed("k-1")), 422
    )

    assert list(problem["errors"]) == ["Idempotency-Key"]
    assert [t["title"] for t in tasks_of(client, tasks_url)] == ["Pay rent"]


def test_keys_are_per_user(client: FlaskClient, tasks_url: str) -> None:
    other = f"/api/other-{uuid.uuid4().hex}/tasks"

    client.post(tasks_url, json={"title": "mine"}, headers=keyed("shared"))
    response = client.post(other, json={"title": "theirs"}, headers=keyed("shared"))

    assert response.status_code == 201
    assert response.get_json()["title"] == "theirs"


def put_record(app: Flask, user_id: str, key: str, *, age: timedelta, done: bool) -> None:
    """A key record as another request left it: in flight, or finished, `age` ago."""
    with app.extensions["tasks_api.engine"].connect() as conn:
        conn.execute(
            insert(KEYS).values(
                user_id=user_id,
                key=key,
                request_hash="0" * 64,
                created_at=datetime.now(UTC) - age,
                status=201 if done else None,
                response='{"old": true}' if done else None,
            )
        )


def test_a_repeat_while_the_first_is_in_flight_is_409(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    put_record(app, user_id, "busy", age=timedelta(seconds=1), done=False)

    response = client.post(tasks_url, json={"title": "x"}, headers=keyed("busy"))

    assert_problem(response, 409)
    assert response.headers["Retry-After"] == "1"
    assert tasks_of(client, tasks_url) == []


def test_a_claim_abandoned_in_flight_is_taken_over(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    put_record(app, user_id, "crashed", age=timedelta(minutes=2), done=False)

    response = client.post(tasks_url, json={"title": "x"}, headers=keyed("crashed"))

    assert response.status_code == 201
    assert len(tasks_of(client, tasks_url)) == 1


def test_an_expired_key_starts_afresh(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    put_record(app, user_id, "old", age=timedelta(hours=25), done=True)

    response = client.post(tasks_url, json={"title": "new"}, headers=keyed("old"))

    assert response.status_code == 201
    assert response.get_json()["title"] == "new"
    assert "Idempotent-Replayed" not in response.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside", "del\x7f"])
def test_malformed_keys_are_422(client: FlaskClient, tasks_url: str, key: str) -> None:
    problem = assert_problem(client.post(tasks_url, json={"title": "x"}, headers=keyed(key)), 422)

    assert list(problem["errors"]) == ["Idempotency-Key"]
    assert tasks_of(client, tasks_url) == []


def test_a_255_character_key_is_fine(client: FlaskClient, tasks_url: str) -> None:
    assert client.post(tasks_url, json={"title": "x"}, headers=keyed("k" * 255)).status_code == 201


def test_racing_repeats_in_one_instance_create_one_task(
    app: Flask, tasks_url: str, user_id: str
) -> None:
    def post(_: int) -> int:
        client = app.test_client()
        return client.post(tasks_url, json={"title": "once"}, headers=keyed("race")).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(post, range(16)))

    assert set(statuses) <= {201, 409} and 201 in statuses
    assert len(tasks_of(app.test_client(), tasks_url)) == 1


@pytest.mark.parametrize("command", ["purge", "purge-idempotency-keys"])
def test_purge_command_deletes_only_expired_keys(
    app: Flask, user_id: str, tasks_url: str, client: FlaskClient, command: str
) -> None:
    put_record(app, user_id, "expired", age=timedelta(hours=30), done=True)
    client.post(tasks_url, json={"title": "x"}, headers=keyed("fresh"))

    result = app.test_cli_runner().invoke(args=[command])

    assert result.exit_code == 0, result.output
    assert "purged" in result.output
    with app.extensions["tasks_api.engine"].connect() as conn:
        left = conn.execute(select(KEYS.c.key).where(KEYS.c.user_id == user_id)).scalars().all()
    assert left == ["fresh"]


# --- two app instances, one database ----------------------------------------------------


def test_two_instances_receiving_the_same_key_at_once_create_one_task(
    two_instances: list[int],
) -> None:
    user = "racer"
    headers = {
        "Authorization": f"Bearer {token_for(user)}",
        "Content-Type": "application/json",
        "Idempotency-Key": "two-instances",
    }
    body = json.dumps({"title": "exactly once"})
    start = threading.Barrier(12)

    def post(n: int) -> tuple[int, str | None]:
        connection = http.client.HTTPConnection("127.0.0.1", two_instances[n % 2], timeout=10)
        start.wait()
        try:
            connection.request("POST", f"/api/{user}/tasks", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        return response.status, response.getheader("Location")

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(post, range(12)))

    statuses = [status for status, _ in results]
    assert set(statuses) <= {201, 409} and 201 in statuses
    assert len({location for status, location in results if status == 201}) == 1
    connection = http.client.HTTPConnection("127.0.0.1", two_instances[0], timeout=10)
    connection.request("GET", f"/api/{user}/tasks", headers=headers)
    listed = json.loads(connection.getresponse().read())
    connection.close()
    assert [t["title"] for t in listed] == ["exactly once"]

"""Limits for each user (API.md): 100,000 tasks and 1,000 lists, kept in the user's row
(sync_positions) by every write that changes them; past one, a 409 naming it and
nothing stored. Concurrent creates through two instances: tests/test_organize_race.py."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from tasks_api.models import LISTS, POSITIONS, TASKS
from tests.support import assert_problem
from tests.test_lists import make_list, make_task


@pytest.fixture
def lists_url(user_id: str) -> str:
    return f"/api/{user_id}/lists"


def counts(app: Flask, user_id: str) -> tuple[Any, ...]:
    """(tasks, lists) as the user's row keeps them, and as counted."""
    with app.extensions["tasks_api.engine"].connect() as conn:
        kept = conn.execute(
            select(POSITIONS.c.tasks, POSITIONS.c.lists).where(POSITIONS.c.user_id == user_id)
        ).one()
        counted = [
            conn.execute(select(func.count()).where(table.c.user_id == user_id)).scalar()
            for table in (TASKS, LISTS)
        ]
    return tuple(kept), tuple(counted)


def set_counts(app: Flask, user_id: str, **values: int) -> None:
    with app.extensions["tasks_api.engine"].connect() as conn:
        conn.execute(update(POSITIONS).where(POSITIONS.c.user_id == user_id).values(**values))


def test_the_counts_follow_every_write(
    app: Flask, client: FlaskClient, tasks_url: str, lists_url: str, user_id: str
) -> None:
    home, work = make_list(client, lists_url, "Home"), make_list(client, lists_url, "Work")
    parent = make_task(client, tasks_url, "parent", list_id=home["id"])
    for n in range(3):
        make_task(client, tasks_url, f"step {n}", parent_id=parent["id"])
    loose = make_task(client, tasks_url, "loose")
    keyed = {"Idempotency-Key": "k"}
    client.post(tasks_url, json={"title": "keyed"}, headers=keyed)
    client.post(tasks_url, json={"title": "keyed"}, headers=keyed)  # a replay adds none
    client.post(tasks_url, json={"title": "refused", "list_id": loose["id"]})  # no such list
    assert counts(app, user_id) == ((6, 2), (6, 2))

    client.delete(f"{tasks_url}/{parent['id']}")  # with its three subtasks
    assert counts(app, user_id) == ((2, 2), (2, 2))
    make_task(client, tasks_url, "filed", list_id=work["id"])
    client.delete(f"{lists_url}/{work['id']}")  # with its task
    client.delete(f"{tasks_url}/{loose['id']}")
    client.delete(f"{tasks_url}/{loose['id']}")  # a 404 takes none
    assert counts(app, user_id) == ((1, 1), (1, 1))


def test_past_100000_tasks_a_create_is_409_and_stores_nothing(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    make_task(client, tasks_url, "first")
    set_counts(app, user_id, tasks=99_999)  # as if the user had that many

    assert client.post(tasks_url, json={"title": "the 100,000th"}).status_code == 201
    for response in (
        client.post(tasks_url, json={"title": "one too many"}),
        client.post(tasks_url, json={"title": "keyed"}, headers={"Idempotency-Key": "k"}),
    ):
        problem = assert_problem(response, 409)
        assert "100,000 tasks" in problem["detail"]
        assert "Retry-After" not in response.headers
    assert counts(app, user_id)[0] == (100_000, 0)
    assert len(client.get(tasks_url).get_json()) == 2
    # The refused keyed create left its key free: deleting one task lets it through.
    client.delete(f"{tasks_url}/{client.get(tasks_url).get_json()[0]['id']}")
    again = client.post(tasks_url, json={"title": "keyed"}, headers={"Idempotency-Key": "k"})
    assert again.status_code == 201


def test_past_1000_lists_a_create_is_409_and_stores_nothing(
    app: Flask, client: FlaskClient, lists_url: str, user_id: str
) -> None:
    make_list(client, lists_url, "first")
    set_counts(app, user_id, lists=999)

    assert client.post(lists_url, json={"title": "the 1,000th"}).status_code == 201
    response = client.post(lists_url, json={"title": "one too many"})

    assert "1,000 lists" in assert_problem(response, 409)["detail"]
    assert [item["title"] for item in client.get(lists_url).get_json()] == [
        "first",
        "the 1,000th",
    ]
    assert counts(app, user_id)[0][1] == 1000

"""Subtasks (API.md, "Organizing: subtasks"): one level, in the parent's list; deleting
and completing cascade, each changed task with a new version and in the sync feed; 200
subtasks a parent at most."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.support import assert_problem
from tests.test_listing import walk
from tests.test_lists import make_list, make_task


@pytest.fixture
def lists_url(user_id: str) -> str:
    return f"/api/{user_id}/lists"


def get(client: FlaskClient, tasks_url: str, task: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"{tasks_url}/{task['id']}").get_json()
    return body


def feed(client: FlaskClient, tasks_url: str, since: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"{tasks_url}/changes?since={since}").get_json()
    return body


def token(client: FlaskClient, tasks_url: str) -> str:
    answer: str = client.get(f"{tasks_url}/changes").get_json()["next"]
    while (body := feed(client, tasks_url, answer))["more"]:
        answer = body["next"]
    return answer


def test_a_subtask_is_in_its_parents_list_last_among_its_siblings(
    client: FlaskClient, tasks_url: str, lists_url: str
) -> None:
    work = make_list(client, lists_url, "Work")
    parent = make_task(client, tasks_url, "Ship it", list_id=work["id"])

    steps = [make_task(client, tasks_url, f"step {n}", parent_id=parent["id"]) for n in range(3)]
    named = make_task(client, tasks_url, "named", parent_id=parent["id"], list_id=work["id"])

    assert {step["list_id"] for step in steps} == {work["id"]}
    assert [step["parent_id"] for step in steps] == [parent["id"]] * 3
    assert named["list_id"] == work["id"]
    ordered = client.get(f"{tasks_url}?parent={parent['id']}&sort=position").get_json()
    assert [task["title"] for task in ordered] == ["step 0", "step 1", "step 2", "named"]
    # Top-level tasks only, and the list's tasks with its subtasks.
    top = client.get(f"{tasks_url}?list={work['id']}&parent=none").get_json()
    assert [task["id"] for task in top] == [parent["id"]]
    assert len(client.get(f"{tasks_url}?list={work['id']}").get_json()) == 5


@pytest.mark.parametrize(
    ("parent", "field"),
    [
        ("missing", "parent_id"),
        ("theirs", "parent_id"),
        ("subtask", "parent_id"),
        ("other-list", "list_id"),
    ],
)
def test_a_subtask_needs_a_top_level_parent_of_the_user(
    app: Flask, client: FlaskClient, tasks_url: str, lists_url: str, parent: str, field: str
) -> None:
    work, home = make_list(client, lists_url, "Work"), make_list(client, lists_url, "Home")
    top = make_task(client, tasks_url, "top", list_id=work["id"])
    below = make_task(client, tasks_url, "below", parent_id=top["id"])
    theirs = make_task(client, f"/api/other-{uuid.uuid4().hex}/tasks", "theirs")
    body = {
        "missing": {"parent_id": str(uuid.uuid4())},
        "theirs": {"parent_id": theirs["id"]},
        "subtask": {"parent_id": below["id"]},
        "other-list": {"parent_id": top["id"], "list_id": home["id"]},
    }[parent]
    before = walk(client, f"{tasks_url}?limit=500")
    loose = make_task(client, tasks_url, "loose")

    problem = assert_problem(client.post(tasks_url, json={"title": "t", **body}), 422)
    moved = assert_problem(client.post(f"{tasks_url}/{loose['id']}/move", json=body), 422)
    put = assert_problem(client.put(f"{tasks_url}/{loose['id']}", json=body), 422)

    for answer in (problem, moved, put):
        assert list(answer["errors"]) == [field]
    assert walk(client, f"{tasks_url}?limit=500") == [loose, *before]


def test_no_second_level_and_no_task_its_own_parent(client: FlaskClient, tasks_url: str) -> None:
    parent = make_task(client, tasks_url, "parent")
    make_task(client, tasks_url, "step", parent_id=parent["id"])
    other = make_task(client, tasks_url, "other")

    with_steps = client.put(f"{tasks_url}/{parent['id']}", json={"parent_id": other["id"]})
    itself = client.post(f"{tasks_url}/{other['id']}/move", json={"parent_id": other["id"]})

    assert list(assert_problem(with_steps, 422)["errors"]) == ["parent_id"]
    assert "has subtasks" in assert_problem(with_steps, 422)["detail"]
    assert "own parent" in assert_problem(itself, 422)["detail"]
    assert get(client, tasks_url, parent)["parent_id"] is None
    assert get(client, tasks_url, other)["version"] == 1


def test_a_task_joins_and_leaves_a_parent(
    client: FlaskClient, tasks_url: str, lists_url: str
) -> None:
    work = make_list(client, lists_url, "Work")
    parent = make_task(client, tasks_url, "parent", list_id=work["id"])
    first = make_task(client, tasks_url, "first step", parent_id=parent["id"])
    loose = make_task(client, tasks_url, "loose")  # in the inbox

    joined = client.put(f"{tasks_url}/{loose['id']}", json={"parent_id": parent["id"]}).get_json()
    assert (joined["list_id"], joined["parent_id"], joined["version"]) == (
        work["id"],
        parent["id"],
        2,
    )
    assert joined["position"] > first["position"]  # last among its new siblings
    left = client.put(f"{tasks_url}/{loose['id']}", json={"parent_id": None}).get_json()
    assert (left["list_id"], left["parent_id"]) == (work["id"], None)
    top = client.get(f"{tasks_url}?list={work['id']}&sort=position").get_json()
    assert [task["title"] for task in top] == ["parent", "loose"]
    # Sent to another list without a parent, a subtask leaves its parent.
    moved = client.post(f"{tasks_url}/{first['id']}/move", json={"list_id": None}).get_json()
    assert (moved["list_id"], moved["parent_id"]) == (None, None)


def test_a_parent_moved_to_another_list_takes_its_subtasks(
    client: FlaskClient, tasks_url: str, lists_url: str
) -> None:
    home, work = make_list(client, lists_url, "Home"), make_list(client, lists_url, "Work")
    parent = make_task(client, tasks_url, "parent", list_id=home["id"])
    steps = [make_task(client, tasks_url, f"step {n}", parent_id=parent["id"]) for n in range(3)]
    since = token(client, tasks_url)

    moved = client.post(f"{tasks_url}/{parent['id']}/move", json={"list_id": work["id"]})

    assert moved.status_code == 200
    for step in steps:
        now = get(client, tasks_url, step)
        assert (now["list_id"], now["parent_id"], now["version"]) == (
            work["id"],
            parent["id"],
            2,
        )
        assert now["position"] == step["position"]  # still in the same order below it
    changed = {task["id"]: task["version"] for task in feed(client, tasks_url, since)["changes"]}
    assert changed == {parent["id"]: 2, **{step["id"]: 2 for step in steps}}


def test_deleting_a_parent_deletes_its_subtasks_and_each_is_in_the_feed(
    client: FlaskClient, tasks_url: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    steps = [make_task(client, tasks_url, f"step {n}", parent_id=parent["id"]) for n in range(3)]
    kept = make_task(client, tasks_url, "kept")
    since = token(client, tasks_url)

    assert client.delete(f"{tasks_url}/{parent['id']}").status_code == 204

    for task in (parent, *steps):
        assert_problem(client.get(f"{tasks_url}/{task['id']}"), 404)
    assert [task["id"] for task in client.get(tasks_url).get_json()] == [kept["id"]]
    answer = feed(client, tasks_url, since)
    assert sorted(answer["deleted"]) == sorted(task["id"] for task in (parent, *steps))
    assert answer["changes"] == []
    # Deleting a subtask deletes it alone.
    step = make_task(client, tasks_url, "step", parent_id=kept["id"])
    assert client.delete(f"{tasks_url}/{step['id']}").status_code == 204
    assert get(client, tasks_url, kept)["version"] == 1


@pytest.mark.parametrize(
    ("how", "body"),
    [
        ("toggle", None),
        ("set", {"completed": True}),
        ("put", {"status": "done"}),
        ("put", {"completed": True}),
    ],
)
def test_completing_a_parent_completes_its_open_subtasks(
    client: FlaskClient, tasks_url: str, how: str, body: dict[str, Any] | None
) -> None:
    parent = make_task(client, tasks_url, "parent")
    open_steps = [
        make_task(client, tasks_url, f"step {n}", parent_id=parent["id"]) for n in range(2)
    ]
    started = make_task(client, tasks_url, "started", parent_id=parent["id"], status="in_progress")
    done = make_task(client, tasks_url, "done", parent_id=parent["id"], completed=True)
    since = token(client, tasks_url)

    url = f"{tasks_url}/{parent['id']}"
    response = (
        client.put(url, json=body) if how == "put" else client.patch(f"{url}/complete", json=body)
    )

    assert response.get_json()["status"] == "done"
    for step in (*open_steps, started):
        now = get(client, tasks_url, step)
        assert (now["status"], now["completed"], now["version"]) == ("done", True, 2)
        assert now["completed_at"] is not None
    assert get(client, tasks_url, done) == done  # already done: unchanged
    changed = {task["id"]: task["version"] for task in feed(client, tasks_url, since)["changes"]}
    assert changed == {parent["id"]: 2, **{s["id"]: 2 for s in (*open_steps, started)}}


@pytest.mark.parametrize(
    ("how", "body"),
    [
        ("toggle", None),
        ("set", {"completed": False}),
        ("put", {"status": "in_progress"}),
        ("put", {"completed": False}),
    ],
)
def test_reopening_a_subtask_of_a_done_parent_makes_the_parent_todo(
    client: FlaskClient, tasks_url: str, how: str, body: dict[str, Any] | None
) -> None:
    parent = make_task(client, tasks_url, "parent")
    step = make_task(client, tasks_url, "step", parent_id=parent["id"])
    sibling = make_task(client, tasks_url, "sibling", parent_id=parent["id"])
    client.patch(f"{tasks_url}/{parent['id']}/complete")  # completes both steps
    since = token(client, tasks_url)

    url = f"{tasks_url}/{step['id']}"
    response = (
        client.put(url, json=body) if how == "put" else client.patch(f"{url}/complete", json=body)
    )

    assert response.get_json()["status"] != "done"
    reopened = get(client, tasks_url, parent)
    assert (reopened["status"], reopened["completed"], reopened["completed_at"]) == (
        "todo",
        False,
        None,
    )
    assert reopened["version"] == 3
    assert get(client, tasks_url, sibling)["status"] == "done"  # the others stay done
    changed = {task["id"]: task["version"] for task in feed(client, tasks_url, since)["changes"]}
    assert changed == {parent["id"]: 3, step["id"]: 3}


def test_reopening_a_parent_leaves_its_subtasks_done(client: FlaskClient, tasks_url: str) -> None:
    parent = make_task(client, tasks_url, "parent")
    step = make_task(client, tasks_url, "step", parent_id=parent["id"])
    client.patch(f"{tasks_url}/{parent['id']}/complete")

    client.patch(f"{tasks_url}/{parent['id']}/complete")

    assert get(client, tasks_url, parent)["status"] == "todo"
    assert get(client, tasks_url, step)["status"] == "done"


def test_an_open_subtask_added_to_a_done_parent_leaves_it_done(
    client: FlaskClient, tasks_url: str
) -> None:
    # The rules fire when a status changes; a create or a move changes no other task.
    parent = make_task(client, tasks_url, "parent", completed=True)
    make_task(client, tasks_url, "new step", parent_id=parent["id"])
    loose = make_task(client, tasks_url, "loose")
    client.post(f"{tasks_url}/{loose['id']}/move", json={"parent_id": parent["id"]})

    assert get(client, tasks_url, parent) == parent


def test_a_parent_takes_200_subtasks_and_no_more(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    for n in range(199):
        make_task(client, tasks_url, f"step {n}", parent_id=parent["id"])
    loose = make_task(client, tasks_url, "loose")
    last = make_task(client, tasks_url, "step 199", parent_id=parent["id"])

    for response in (
        client.post(tasks_url, json={"title": "one more", "parent_id": parent["id"]}),
        client.put(f"{tasks_url}/{loose['id']}", json={"parent_id": parent["id"]}),
        client.post(f"{tasks_url}/{loose['id']}/move", json={"parent_id": parent["id"]}),
    ):
        problem = assert_problem(response, 409)
        assert "200 subtasks" in problem["detail"]
        assert "Retry-After" not in response.headers
    assert get(client, tasks_url, loose) == loose
    with app.extensions["tasks_api.engine"].connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM tasks WHERE user_id = :u AND parent_id IS NOT NULL"),
            {"u": user_id},
        ).scalar()
    assert count == 200
    # A subtask moving among its own siblings is not one more.
    moved = client.post(f"{tasks_url}/{last['id']}/move", json={"after": None})
    assert moved.status_code == 200

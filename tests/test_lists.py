"""Lists of tasks (API.md, "Organizing: lists"): create, read, rename, delete with their
tasks, move; paging; ETags; Idempotency-Key; `open_tasks` kept exact; the inbox."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support import assert_problem
from tests.test_listing import next_url, walk

LIST_KEYS = ["id", "title", "position", "open_tasks", "created_at", "updated_at", "version"]


@pytest.fixture
def lists_url(user_id: str) -> str:
    return f"/api/{user_id}/lists"


def make_list(client: FlaskClient, lists_url: str, title: str = "Groceries") -> dict[str, Any]:
    response = client.post(lists_url, json={"title": title})
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def make_task(client: FlaskClient, tasks_url: str, title: str, **fields: Any) -> dict[str, Any]:
    response = client.post(tasks_url, json={"title": title, **fields})
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def titles(client: FlaskClient, lists_url: str) -> list[str]:
    return [item["title"] for item in walk(client, lists_url)]


def open_count(client: FlaskClient, lists_url: str, list_id: str) -> int:
    count: int = client.get(f"{lists_url}/{list_id}").get_json()["open_tasks"]
    return count


def test_create_returns_the_list_its_location_and_etag(client: FlaskClient, lists_url: str) -> None:
    response = client.post(lists_url, json={"title": "  Groceries \n"})

    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == LIST_KEYS
    assert (body["title"], body["open_tasks"], body["version"]) == ("Groceries", 0, 1)
    assert uuid.UUID(body["id"]).version == 4
    assert body["created_at"] == body["updated_at"]
    assert response.headers["Location"] == f"{lists_url}/{body['id']}"
    assert response.headers["ETag"] == '"1"'
    assert client.get(response.headers["Location"]).get_json() == body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": None}, "title"),
        ({"title": 3}, "title"),
        ({"title": "ok", "open_tasks": 3}, "open_tasks"),
        ({"title": "ok", "position": "1"}, "position"),
        ({"title": "ok", "id": str(uuid.uuid4())}, "id"),
        ({"title": "ok", "color": "red"}, "color"),
    ],
)
def test_a_bad_list_is_422_naming_the_field_and_stores_nothing(
    client: FlaskClient, lists_url: str, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(client.post(lists_url, json=body), 422)

    assert field in problem["errors"]
    assert client.get(lists_url).get_json() == []


def test_a_title_of_200_characters_once_trimmed_is_accepted(
    client: FlaskClient, lists_url: str
) -> None:
    created = make_list(client, lists_url, " " + "é" * 200 + " ")
    assert created["title"] == "é" * 200


def test_lists_come_in_their_manual_order_new_ones_last(
    client: FlaskClient, lists_url: str
) -> None:
    for title in ("Home", "Work", "Errands"):
        make_list(client, lists_url, title)

    listed = client.get(lists_url).get_json()

    assert [item["title"] for item in listed] == ["Home", "Work", "Errands"]
    positions = [item["position"] for item in listed]
    assert positions == sorted(positions) and len(set(positions)) == 3


def test_lists_page_by_cursor(client: FlaskClient, lists_url: str) -> None:
    made = [make_list(client, lists_url, f"list {n}")["title"] for n in range(7)]

    first = client.get(f"{lists_url}?limit=3")
    assert first.status_code == 200
    assert len(first.get_json()) == 3
    assert next_url(first) is not None
    assert titles(client, f"{lists_url}?limit=3") == made
    # A list created while paging is neither skipped nor repeated among the others.
    seen = walk(
        client,
        f"{lists_url}?limit=2",
        lambda page: page == 1 and make_list(client, lists_url, "late"),
    )
    assert [item["title"] for item in seen] == [*made, "late"]


def test_a_cursor_of_tasks_is_no_cursor_of_lists(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    make_list(client, lists_url, "a")
    make_list(client, lists_url, "b")
    list_id = client.get(lists_url).get_json()[0]["id"]
    for n in range(3):
        make_task(client, tasks_url, f"t{n}", list_id=list_id)
    task_page = client.get(f"{tasks_url}?list={list_id}&sort=position&limit=1")
    task_cursor = next_url(task_page)
    assert task_cursor is not None
    cursor = task_cursor.split("cursor=")[1].split("&")[0]

    problem = assert_problem(client.get(f"{lists_url}?cursor={cursor}"), 422)
    assert list(problem["errors"]) == ["cursor"]


def test_rename_changes_only_the_title_and_the_same_title_changes_nothing(
    client: FlaskClient, lists_url: str
) -> None:
    created = make_list(client, lists_url)
    url = f"{lists_url}/{created['id']}"

    renamed = client.put(url, json={"title": " Food "})
    again = client.put(url, json={"title": "Food"})

    assert renamed.status_code == 200
    assert renamed.get_json()["title"] == "Food"
    assert renamed.get_json()["version"] == 2
    assert renamed.headers["ETag"] == '"2"'
    assert again.get_json() == renamed.get_json()
    assert renamed.get_json()["position"] == created["position"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "json"), ({"title": ""}, "title"), ({"version": 3}, "version"), ({"x": 1}, "x")],
)
def test_a_bad_rename_is_422_and_changes_nothing(
    client: FlaskClient, lists_url: str, body: dict[str, Any], field: str
) -> None:
    created = make_list(client, lists_url)
    url = f"{lists_url}/{created['id']}"

    problem = assert_problem(client.put(url, json=body), 422)

    assert field in problem["errors"]
    assert client.get(url).get_json() == created


def test_lists_honour_etags(client: FlaskClient, lists_url: str) -> None:
    created = make_list(client, lists_url)
    url = f"{lists_url}/{created['id']}"

    assert client.get(url, headers={"If-None-Match": '"1"'}).status_code == 304
    stale = client.put(url, json={"title": "x"}, headers={"If-Match": '"7"'})
    assert_problem(stale, 412)
    assert stale.headers["ETag"] == '"1"'
    assert client.put(url, json={"title": "x"}, headers={"If-Match": '"1"'}).status_code == 200
    assert_problem(client.delete(url, headers={"If-Match": '"1"'}), 412)
    assert_problem(client.post(f"{url}/move", json={}, headers={"If-Match": '"1"'}), 412)
    assert client.delete(url, headers={"If-Match": '"2"'}).status_code == 204


def test_another_users_list_is_a_plain_404(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    theirs = make_list(client, f"/api/other-{uuid.uuid4().hex}/lists")
    url = f"{lists_url}/{theirs['id']}"

    for response in (
        client.get(url),
        client.put(url, json={"title": "mine"}),
        client.delete(url),
        client.post(f"{url}/move", json={}),
        client.get(f"{lists_url}/not-a-uuid"),
    ):
        assert_problem(response, 404)
    # Naming it in a task is naming no list of this user's.
    problem = assert_problem(
        client.post(tasks_url, json={"title": "t", "list_id": theirs["id"]}), 422
    )
    assert list(problem["errors"]) == ["list_id"]


def test_open_tasks_is_kept_through_every_kind_of_change(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    home, work = make_list(client, lists_url, "Home"), make_list(client, lists_url, "Work")
    a = make_task(client, tasks_url, "a", list_id=home["id"])
    b = make_task(client, tasks_url, "b", list_id=home["id"], completed=True)
    c = make_task(client, tasks_url, "c", list_id=home["id"])
    step = make_task(client, tasks_url, "step", parent_id=c["id"])
    make_task(client, tasks_url, "inbox")
    assert (
        open_count(client, lists_url, home["id"]),
        open_count(client, lists_url, work["id"]),
    ) == (3, 0)

    client.patch(f"{tasks_url}/{a['id']}/complete")  # done: one fewer
    assert open_count(client, lists_url, home["id"]) == 2
    client.put(f"{tasks_url}/{b['id']}", json={"status": "in_progress"})  # open again
    assert open_count(client, lists_url, home["id"]) == 3
    client.post(f"{tasks_url}/{c['id']}/move", json={"list_id": work["id"]})  # with its step
    assert (
        open_count(client, lists_url, home["id"]),
        open_count(client, lists_url, work["id"]),
    ) == (1, 2)
    client.patch(f"{tasks_url}/{c['id']}/complete", json={"completed": True})  # and its step
    assert open_count(client, lists_url, work["id"]) == 0
    client.put(f"{tasks_url}/{step['id']}", json={"status": "todo"})  # reopens c too
    assert open_count(client, lists_url, work["id"]) == 2
    client.put(f"{tasks_url}/{b['id']}", json={"list_id": None})  # to the inbox
    assert open_count(client, lists_url, home["id"]) == 0
    client.delete(f"{tasks_url}/{c['id']}")  # with its step
    assert open_count(client, lists_url, work["id"]) == 0
    # Counted, for comparison: what the kept count must equal.
    for listed in client.get(lists_url).get_json():
        tasks = walk(client, f"{tasks_url}?list={listed['id']}&limit=500")
        assert listed["open_tasks"] == sum(task["status"] != "done" for task in tasks)


def test_open_tasks_does_not_change_the_lists_version_or_etag(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    created = make_list(client, lists_url)
    url = f"{lists_url}/{created['id']}"

    make_task(client, tasks_url, "t", list_id=created["id"])

    assert client.get(url, headers={"If-None-Match": '"1"'}).status_code == 304
    fresh = client.get(url).get_json()
    assert (fresh["open_tasks"], fresh["version"], fresh["updated_at"]) == (
        1,
        1,
        created["updated_at"],
    )


def test_delete_removes_the_list_and_every_task_in_it(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    doomed, kept = make_list(client, lists_url, "Doomed"), make_list(client, lists_url, "Kept")
    parent = make_task(client, tasks_url, "parent", list_id=doomed["id"])
    make_task(client, tasks_url, "step 1", parent_id=parent["id"])
    make_task(client, tasks_url, "step 2", parent_id=parent["id"])
    make_task(client, tasks_url, "loose", list_id=doomed["id"])
    survivors = {
        make_task(client, tasks_url, "elsewhere", list_id=kept["id"])["id"],
        make_task(client, tasks_url, "inbox")["id"],
    }

    assert client.delete(f"{lists_url}/{doomed['id']}").status_code == 204

    assert_problem(client.get(f"{lists_url}/{doomed['id']}"), 404)
    assert_problem(client.delete(f"{lists_url}/{doomed['id']}"), 404)
    assert {task["id"] for task in walk(client, f"{tasks_url}?limit=500")} == survivors
    assert [item["title"] for item in client.get(lists_url).get_json()] == ["Kept"]


def test_the_inbox_is_no_list_and_holds_tasks_without_one(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    groceries = make_list(client, lists_url)
    loose = make_task(client, tasks_url, "loose")
    filed = make_task(client, tasks_url, "filed", list_id=groceries["id"])

    assert loose["list_id"] is None
    assert client.get(lists_url).get_json() == [
        client.get(f"{lists_url}/{groceries['id']}").get_json()
    ]
    inbox = client.get(f"{tasks_url}?list=inbox").get_json()
    assert [task["id"] for task in inbox] == [loose["id"]]
    in_list = client.get(f"{tasks_url}?list={groceries['id']}").get_json()
    assert [task["id"] for task in in_list] == [filed["id"]]
    assert_problem(client.get(f"{lists_url}/inbox"), 404)


@pytest.mark.parametrize("query", ["list=nope", "list=", "parent=nope", "parent="])
def test_bad_list_and_parent_filters_are_422(
    client: FlaskClient, tasks_url: str, query: str
) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?{query}"), 422)
    assert list(problem["errors"]) == [query.split("=")[0]]


def test_a_repeated_idempotency_key_on_create_returns_the_first_list(
    client: FlaskClient, lists_url: str, tasks_url: str
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post(lists_url, json={"title": "Once"}, headers=key)
    client.put(first.headers["Location"], json={"title": "Changed since"})

    again = client.post(lists_url, json={"title": "Once"}, headers=key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.data == first.data
    assert (again.headers["Location"], again.headers["ETag"]) == (
        first.headers["Location"],
        '"1"',
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(client.get(lists_url).get_json()) == 1
    other = client.post(lists_url, json={"title": "Other"}, headers=key)
    assert list(assert_problem(other, 422)["errors"]) == ["Idempotency-Key"]
    # The same key on a task's create with the same body is another request.
    task = client.post(tasks_url, json={"title": "Once"}, headers=key)
    assert list(assert_problem(task, 422)["errors"]) == ["Idempotency-Key"]

"""Many at once (API.md): one action on up to 100 tasks, a result per id in the order sent,
each task changed as its own route would change it; all or nothing on request."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support import assert_problem
from tests.test_lists import make_list, make_task
from tests.test_subtasks import feed, token


@pytest.fixture
def lists_url(user_id: str) -> str:
    return f"/api/{user_id}/lists"


@pytest.fixture
def bulk_url(tasks_url: str) -> str:
    return f"{tasks_url}/bulk"


def bulk(client: FlaskClient, bulk_url: str, action: str, ids: list[Any], **body: Any) -> Any:
    response = client.post(bulk_url, json={"action": action, "ids": [str(i) for i in ids], **body})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"]


def get(client: FlaskClient, tasks_url: str, task_id: Any) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"{tasks_url}/{task_id}").get_json()
    return body


def test_complete_answers_each_id_in_the_order_sent(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a, b = make_task(client, tasks_url, "a"), make_task(client, tasks_url, "b")
    missing = uuid.uuid4()

    results = bulk(client, bulk_url, "complete", [b["id"], missing, a["id"]])

    assert [(r["id"], r["status"]) for r in results] == [
        (b["id"], 200),
        (str(missing), 404),
        (a["id"], 200),
    ]
    for result in (results[0], results[2]):
        assert result["task"]["status"] == "done"
        assert result["task"]["completed_at"] is not None
        assert result["task"]["version"] == 2
        assert get(client, tasks_url, result["id"]) == result["task"]


def test_reopen_leaves_tasks_that_are_not_done_as_they_are(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    done = make_task(client, tasks_url, "done", completed=True)
    busy = make_task(client, tasks_url, "busy", status="in_progress")

    results = bulk(client, bulk_url, "reopen", [done["id"], busy["id"]])

    assert [r["task"]["status"] for r in results] == ["todo", "in_progress"]
    assert [r["task"]["version"] for r in results] == [2, 1]  # no change, same version


def test_completing_a_parent_completes_its_open_subtasks(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    subtasks = [make_task(client, tasks_url, f"s{n}", parent_id=parent["id"]) for n in range(3)]
    asked = subtasks[1]  # asked for itself too: changed once, by its own result

    results = bulk(client, bulk_url, "complete", [parent["id"], asked["id"]])

    assert [r["status"] for r in results] == [200, 200]
    for subtask in subtasks:
        now = get(client, tasks_url, subtask["id"])
        assert (now["status"], now["version"]) == ("done", 2)


def test_reopening_subtasks_reopens_their_done_parent_once(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    subtasks = [make_task(client, tasks_url, f"s{n}", parent_id=parent["id"]) for n in range(2)]
    bulk(client, bulk_url, "complete", [parent["id"]])

    bulk(client, bulk_url, "reopen", [s["id"] for s in subtasks])

    now = get(client, tasks_url, parent["id"])
    assert (now["status"], now["version"]) == ("todo", 3)


def test_if_match_changes_only_the_tasks_still_at_that_version(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a, b = make_task(client, tasks_url, "a"), make_task(client, tasks_url, "b")
    client.put(f"{tasks_url}/{b['id']}", json={"title": "b2"})

    results = bulk(
        client, bulk_url, "complete", [a["id"], b["id"]], if_match={a["id"]: '"1"', b["id"]: '"1"'}
    )

    assert [r["status"] for r in results] == [200, 412]
    assert get(client, tasks_url, b["id"])["status"] == "todo"


def test_atomic_changes_nothing_when_one_id_fails(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a = make_task(client, tasks_url, "a")
    missing = str(uuid.uuid4())
    before = token(client, tasks_url)

    response = client.post(
        bulk_url, json={"action": "delete", "ids": [a["id"], missing], "atomic": True}
    )

    problem = assert_problem(response, 409)
    assert list(problem["errors"]) == [missing]
    assert problem["errors"][missing][0].startswith("404")
    assert get(client, tasks_url, a["id"]) == a
    assert feed(client, tasks_url, before)["changes"] == []


def test_atomic_refuses_a_failure_only_the_database_finds(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    sub = make_task(client, tasks_url, "sub", parent_id=parent["id"])
    other = make_task(client, tasks_url, "other")

    response = client.post(
        bulk_url,
        json={
            "action": "move",
            "ids": [other["id"], parent["id"]],
            "to": {"parent_id": sub["id"]},  # a subtask cannot be a parent
            "atomic": True,
        },
    )

    problem = assert_problem(response, 409)
    assert set(problem["errors"]) == {other["id"], parent["id"]}
    assert get(client, tasks_url, other["id"]) == other


def test_delete_removes_the_tasks_and_their_subtasks(
    client: FlaskClient, tasks_url: str, bulk_url: str, lists_url: str
) -> None:
    home = make_list(client, lists_url, "Home")
    parent = make_task(client, tasks_url, "parent", list_id=home["id"])
    sub = make_task(client, tasks_url, "sub", parent_id=parent["id"])
    kept = make_task(client, tasks_url, "kept", list_id=home["id"])
    before = token(client, tasks_url)

    results = bulk(client, bulk_url, "delete", [parent["id"], sub["id"]])

    assert [r["status"] for r in results] == [204, 204]
    assert client.get(f"{tasks_url}/{sub['id']}").status_code == 404
    assert client.get(f"{lists_url}/{home['id']}").get_json()["open_tasks"] == 1
    assert sorted(feed(client, tasks_url, before)["deleted"]) == sorted([parent["id"], sub["id"]])
    assert get(client, tasks_url, kept["id"]) == kept


def test_move_appends_to_the_list_in_the_order_the_tasks_had(
    client: FlaskClient, tasks_url: str, bulk_url: str, lists_url: str
) -> None:
    work = make_list(client, lists_url, "Work")
    there = make_task(client, tasks_url, "there", list_id=work["id"])
    a, b, c = (make_task(client, tasks_url, name) for name in "abc")

    results = bulk(client, bulk_url, "move", [c["id"], a["id"]], to={"list_id": work["id"]})

    assert [r["status"] for r in results] == [200, 200]
    order = client.get(f"{tasks_url}?list={work['id']}&sort=position").get_json()
    assert [t["title"] for t in order] == ["there", "a", "c"]
    assert client.get(f"{lists_url}/{work['id']}").get_json()["open_tasks"] == 3
    assert get(client, tasks_url, b["id"]) == b
    assert there["list_id"] == work["id"]


def test_update_sets_the_same_fields_on_each(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a, b = make_task(client, tasks_url, "a"), make_task(client, tasks_url, "b")

    results = bulk(
        client, bulk_url, "update", [a["id"], b["id"]], set={"priority": "high", "tags": ["x"]}
    )

    assert [(r["task"]["priority"], r["task"]["tags"]) for r in results] == [("high", ["x"])] * 2
    tagged = client.get(f"{tasks_url}?tag=X").get_json()
    assert {t["id"] for t in tagged} == {a["id"], b["id"]}


def test_a_task_the_action_cannot_apply_to_is_a_422_naming_why(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a = make_task(client, tasks_url, "a")

    results = bulk(client, bulk_url, "move", [a["id"]], to={"list_id": str(uuid.uuid4())})

    assert results[0]["status"] == 422
    assert list(results[0]["errors"]) == ["list_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "complete", "ids": []}, "ids"),
        ({"action": "complete", "ids": [str(uuid.uuid4())] * 2}, "ids"),
        ({"action": "complete", "ids": [str(uuid.uuid4()) for _ in range(101)]}, "ids"),
        ({"action": "archive", "ids": [str(uuid.uuid4())]}, "action"),
        ({"action": "move", "ids": [str(uuid.uuid4())]}, "to"),
        ({"action": "delete", "ids": [str(uuid.uuid4())], "set": {"title": "x"}}, "set"),
        ({"action": "update", "ids": [str(uuid.uuid4())], "set": {}}, "set"),
        ({"action": "complete", "ids": ["not an id"]}, "ids"),
        ({"action": "complete", "ids": [str(uuid.uuid4())], "atomic": "yes"}, "atomic"),
        (
            {"action": "complete", "ids": [str(uuid.uuid4())], "if_match": {"x": '"1"'}},
            "if_match.x.key",
        ),
        ({"action": "complete", "ids": [], "if_match": {str(uuid.uuid4()): '"1"'}}, "if_match"),
        ({"action": "complete", "ids": [str(uuid.uuid4())], "colour": "red"}, "colour"),
        # A member of `to` or `set`, named by its path.
        ({"action": "move", "ids": [], "to": {"list_id": "nope"}}, "to.list_id"),
        ({"action": "move", "ids": [], "to": {"colour": "red"}}, "to.colour"),
        ({"action": "update", "ids": [], "set": {"title": ""}}, "set.title"),
        (
            {"action": "update", "ids": [], "set": {"status": "done", "completed": False}},
            "set.status",
        ),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field_and_changes_nothing(
    client: FlaskClient, tasks_url: str, bulk_url: str, body: dict[str, Any], field: str
) -> None:
    a = make_task(client, tasks_url, "a")
    if body["ids"] or field != "ids":  # the task among them, so a wrong change would show
        body = {**body, "ids": [a["id"], *body["ids"]]}

    problem = assert_problem(client.post(bulk_url, json=body), 422)

    assert field in problem["errors"]
    assert all(isinstance(messages, list) for messages in problem["errors"].values())
    assert get(client, tasks_url, a["id"]) == a


def test_an_idempotency_key_replays_the_first_response_and_changes_nothing(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a, b = make_task(client, tasks_url, "a"), make_task(client, tasks_url, "b", completed=True)
    body = {"action": "reopen", "ids": [a["id"], b["id"], str(uuid.uuid4())]}
    headers = {"Idempotency-Key": "select-3"}

    first = client.post(bulk_url, json=body, headers=headers)
    client.put(f"{tasks_url}/{b['id']}", json={"completed": True})  # done again
    again = client.post(bulk_url, json=body, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert get(client, tasks_url, b["id"])["status"] == "done"  # not reopened again
    other = client.post(bulk_url, json={**body, "action": "complete"}, headers=headers)
    assert "Idempotency-Key" in assert_problem(other, 422)["errors"]


def test_an_all_or_nothing_refusal_leaves_its_key_free(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    a = make_task(client, tasks_url, "a")
    body = {"action": "delete", "ids": [a["id"]], "if_match": {a["id"]: '"1"'}, "atomic": True}
    client.put(f"{tasks_url}/{a['id']}", json={"title": "a2"})
    headers = {"Idempotency-Key": "retry-me"}

    assert_problem(client.post(bulk_url, json=body, headers=headers), 409)
    retried = client.post(
        bulk_url, json={**body, "if_match": {a["id"]: '"2"'}}, headers={"Idempotency-Key": "x"}
    )

    assert retried.get_json()["results"] == [{"id": a["id"], "status": 204}]
    assert client.post(bulk_url, json=body, headers=headers).status_code == 409  # free again


def test_moving_past_a_parents_200_subtasks_stops_at_the_limit(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    for n in range(198):
        make_task(client, tasks_url, f"s{n}", parent_id=parent["id"])
    movers = [make_task(client, tasks_url, f"m{n}") for n in range(3)]

    results = bulk(
        client, bulk_url, "move", [m["id"] for m in movers], to={"parent_id": parent["id"]}
    )

    assert [r["status"] for r in results] == [200, 200, 409]
    assert "200 subtasks" in results[2]["errors"]["parent_id"][0]
    assert get(client, tasks_url, movers[2]["id"]) == movers[2]


def test_every_task_a_bulk_action_changes_is_in_the_sync_feed(
    client: FlaskClient, tasks_url: str, bulk_url: str
) -> None:
    parent = make_task(client, tasks_url, "parent")
    sub = make_task(client, tasks_url, "sub", parent_id=parent["id"])
    loose = make_task(client, tasks_url, "loose")
    untouched = make_task(client, tasks_url, "untouched")
    since = token(client, tasks_url)

    bulk(client, bulk_url, "complete", [parent["id"], loose["id"]])

    changed = {t["id"]: t["version"] for t in feed(client, tasks_url, since)["changes"]}
    assert changed == {parent["id"]: 2, sub["id"]: 2, loose["id"]: 2}
    assert untouched["id"] not in changed

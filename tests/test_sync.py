"""GET /api/{user_id}/tasks/changes: a client that applies every answer holds the user's
tasks exactly, on both databases; the race with concurrent writers is in
tests/test_sync_race.py."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tasks_api import sync
from tasks_api.models import TOMBSTONES
from tasks_api.repository import changes as repository
from tests.support import assert_problem, token_for


class Replica:
    """A front end's copy of the tasks, kept by the sync feed."""

    def __init__(self, client: FlaskClient, tasks_url: str) -> None:
        self.client, self.url = client, f"{tasks_url}/changes"
        self.tasks: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, dict[str, Any]] = {}
        self.token: str | None = None
        self.answers: list[dict[str, Any]] = []

    def call(self, limit: int | None = None) -> dict[str, Any]:
        query = {"since": self.token, "limit": limit}
        response = self.client.get(self.url, query_string={k: v for k, v in query.items() if v})
        assert response.status_code == 200, response.get_json()
        answer: dict[str, Any] = response.get_json()
        ids = [task["id"] for task in answer["changes"]] + answer["deleted"]
        ids += [item["id"] for item in answer["lists"]] + answer["deleted_lists"]
        assert len(ids) == len(set(ids)), "an id came twice in one answer"
        for task in answer["changes"]:
            self.tasks[task["id"]] = task
        for task_id in answer["deleted"]:
            self.tasks.pop(task_id, None)
        for item in answer["lists"]:
            self.lists[item["id"]] = item
        for list_id in answer["deleted_lists"]:
            self.lists.pop(list_id, None)
        self.token = answer["next"]
        self.answers.append(answer)
        return answer

    def sync(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Call until nothing more waits; the answers of this round."""
        start = len(self.answers)
        while self.call(limit)["more"]:
            pass
        return self.answers[start:]


def listed(client: FlaskClient, tasks_url: str) -> dict[str, dict[str, Any]]:
    response = client.get(tasks_url, query_string={"limit": 500})
    assert "Link" not in response.headers
    return {task["id"]: task for task in response.get_json()}


def create(client: FlaskClient, tasks_url: str, title: str, **fields: Any) -> dict[str, Any]:
    response = client.post(tasks_url, json={"title": title, **fields})
    assert response.status_code == 201
    body: dict[str, Any] = response.get_json()
    return body


def changed(answers: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(task["id"], task["version"]) for answer in answers for task in answer["changes"]]


def deleted(answers: list[dict[str, Any]]) -> list[str]:
    return [task_id for answer in answers for task_id in answer["deleted"]]


def test_a_first_sync_pages_through_every_task(client: FlaskClient, tasks_url: str) -> None:
    made = [create(client, tasks_url, f"task {n}") for n in range(7)]
    replica = Replica(client, tasks_url)

    answers = replica.sync(limit=3)

    assert [len(a["changes"]) for a in answers] == [3, 3, 1]
    assert [a["more"] for a in answers] == [True, True, False]
    assert deleted(answers) == []
    assert sorted(changed(answers)) == sorted((task["id"], 1) for task in made)
    assert replica.tasks == listed(client, tasks_url)


def test_a_user_with_no_tasks_gets_empty_arrays(client: FlaskClient, tasks_url: str) -> None:
    replica = Replica(client, tasks_url)
    first = replica.call()
    assert (first["changes"], first["deleted"], first["more"]) == ([], [], False)
    again = replica.call()
    assert (again["changes"], again["deleted"], again["more"]) == ([], [], False)


def test_each_kind_of_write_comes_once_in_its_current_state(
    client: FlaskClient, tasks_url: str
) -> None:
    kept, renamed, toggled, done, doomed = (
        create(client, tasks_url, title) for title in ("kept", "a", "b", "c", "d")
    )
    replica = Replica(client, tasks_url)
    replica.sync()

    client.put(f"{tasks_url}/{renamed['id']}", json={"title": "renamed"})
    client.put(f"{tasks_url}/{renamed['id']}", json={"priority": "high", "tags": ["x"]})
    client.patch(f"{tasks_url}/{toggled['id']}/complete")
    client.patch(f"{tasks_url}/{done['id']}/complete", json={"completed": True})
    assert client.delete(f"{tasks_url}/{doomed['id']}").status_code == 204
    plain = create(client, tasks_url, "plain")
    keyed = client.post(tasks_url, json={"title": "keyed"}, headers={"Idempotency-Key": "k1"})
    assert keyed.status_code == 201

    answers = replica.sync()

    assert len(answers) == 1
    expected = {
        renamed["id"]: 3,
        toggled["id"]: 2,
        done["id"]: 2,
        plain["id"]: 1,
        keyed.get_json()["id"]: 1,
    }
    assert dict(changed(answers)) == expected
    assert len(changed(answers)) == len(expected)
    assert deleted(answers) == [doomed["id"]]
    assert replica.tasks[renamed["id"]]["title"] == "renamed"
    assert replica.tasks[toggled["id"]]["completed"] is True
    assert kept["id"] in replica.tasks
    assert replica.tasks == listed(client, tasks_url)


def test_nothing_changed_gives_empty_arrays_and_a_token_to_keep(
    client: FlaskClient, tasks_url: str
) -> None:
    task = create(client, tasks_url, "same", tags=["a"])
    gone = create(client, tasks_url, "deleted before the first sync")
    client.delete(f"{tasks_url}/{gone['id']}")
    replica = Replica(client, tasks_url)
    replica.sync()
    # Writes that change nothing keep the task's position, as they keep its version.
    client.put(f"{tasks_url}/{task['id']}", json={"title": "  same ", "tags": ["a", "A"]})
    client.patch(f"{tasks_url}/{task['id']}/complete", json={"completed": False})
    client.put(f"{tasks_url}/{uuid.uuid4()}", json={"title": "no such task"})

    for _ in range(2):
        answer = replica.call()
        assert (answer["changes"], answer["deleted"], answer["more"]) == ([], [], False)
        assert answer["next"]


def test_a_task_created_and_deleted_between_two_syncs_is_not_sent(
    client: FlaskClient, tasks_url: str
) -> None:
    create(client, tasks_url, "kept")
    replica = Replica(client, tasks_url)
    replica.sync()
    brief = create(client, tasks_url, "brief")
    client.put(f"{tasks_url}/{brief['id']}", json={"title": "briefer"})
    client.delete(f"{tasks_url}/{brief['id']}")

    answers = replica.sync()

    assert changed(answers) == []
    assert deleted(answers) == [brief["id"]]  # an id the client never had: a no-op
    assert replica.tasks == listed(client, tasks_url)


def test_a_delete_during_the_first_pass_is_sent_one_before_is_not(
    client: FlaskClient, tasks_url: str
) -> None:
    before = create(client, tasks_url, "deleted before")
    client.delete(f"{tasks_url}/{before['id']}")
    made = [create(client, tasks_url, f"task {n}") for n in range(4)]
    replica = Replica(client, tasks_url)
    replica.call(limit=2)
    client.delete(f"{tasks_url}/{made[0]['id']}")  # already sent
    client.delete(f"{tasks_url}/{made[3]['id']}")  # not sent yet
    client.put(f"{tasks_url}/{made[1]['id']}", json={"title": "changed"})

    answers = replica.sync(limit=2)

    assert before["id"] not in deleted(answers)
    assert made[0]["id"] in deleted(answers)
    assert replica.tasks == listed(client, tasks_url)
    assert replica.tasks[made[1]["id"]]["title"] == "changed"


def versions(items: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {item_id: item["version"] for item_id, item in items.items()}


def test_lists_travel_in_the_same_feed(client: FlaskClient, tasks_url: str) -> None:
    lists_url = tasks_url.removesuffix("/tasks") + "/lists"
    home = client.post(lists_url, json={"title": "Home"}).get_json()
    work = client.post(lists_url, json={"title": "Work"}).get_json()
    create(client, tasks_url, "in home", list_id=home["id"])
    replica = Replica(client, tasks_url)
    first = replica.sync()
    assert sorted(item["title"] for a in first for item in a["lists"]) == ["Home", "Work"]

    client.put(f"{lists_url}/{home['id']}", json={"title": "House"})
    client.post(f"{lists_url}/{work['id']}/move", json={"after": None})
    brief = client.post(lists_url, json={"title": "Brief"}).get_json()
    client.delete(f"{lists_url}/{brief['id']}")
    answers = replica.sync()

    sent = [item for answer in answers for item in answer["lists"]]
    assert {item["id"]: (item["title"], item["version"]) for item in sent} == {
        home["id"]: ("House", 2),
        work["id"]: ("Work", 2),
    }
    assert [i for answer in answers for i in answer["deleted_lists"]] == [brief["id"]]
    fresh = {item["id"]: item for item in client.get(lists_url).get_json()}
    assert versions(replica.lists) == versions(fresh)
    assert replica.lists[home["id"]]["open_tasks"] == 1


def test_a_deleted_list_and_its_tasks_are_all_reported_deleted(
    client: FlaskClient, tasks_url: str
) -> None:
    lists_url = tasks_url.removesuffix("/tasks") + "/lists"
    doomed = client.post(lists_url, json={"title": "Doomed"}).get_json()
    parent = create(client, tasks_url, "parent", list_id=doomed["id"])
    step = create(client, tasks_url, "step", parent_id=parent["id"])
    loose = create(client, tasks_url, "loose", list_id=doomed["id"])
    kept = create(client, tasks_url, "kept")
    replica = Replica(client, tasks_url)
    replica.sync()

    client.delete(f"{lists_url}/{doomed['id']}")
    answers = replica.sync(limit=2)  # several pages: every id once, none lost

    assert sorted(deleted(answers)) == sorted(t["id"] for t in (parent, step, loose))
    assert [i for answer in answers for i in answer["deleted_lists"]] == [doomed["id"]]
    assert (list(replica.tasks), replica.lists) == ([kept["id"]], {})


def test_once_complete_every_task_held_is_in_a_list_held(
    client: FlaskClient, tasks_url: str
) -> None:
    lists_url = tasks_url.removesuffix("/tasks") + "/lists"
    replica = Replica(client, tasks_url)
    for n in range(3):
        made = client.post(lists_url, json={"title": f"list {n}"}).get_json()
        create(client, tasks_url, f"task {n}", list_id=made["id"])
        replica.sync(limit=1)
        held = {task["list_id"] for task in replica.tasks.values()} - {None}
        assert held <= set(replica.lists)
    assert versions(replica.tasks) == versions(listed(client, tasks_url))


def test_a_lists_open_tasks_in_the_feed_is_its_count_then(
    client: FlaskClient, tasks_url: str
) -> None:
    lists_url = tasks_url.removesuffix("/tasks") + "/lists"
    made = client.post(lists_url, json={"title": "Home"}).get_json()
    replica = Replica(client, tasks_url)
    create(client, tasks_url, "a", list_id=made["id"])
    create(client, tasks_url, "b", list_id=made["id"])
    replica.sync()
    assert replica.lists[made["id"]]["open_tasks"] == 2

    create(client, tasks_url, "c", list_id=made["id"])
    answers = replica.sync()

    # The count is derived: the list itself did not change, so it does not come again.
    assert [a["lists"] for a in answers] == [[]]
    assert client.get(f"{lists_url}/{made['id']}").get_json()["open_tasks"] == 3


def test_limit_bounds_changes_and_deleted_together(client: FlaskClient, tasks_url: str) -> None:
    made = [create(client, tasks_url, f"task {n}") for n in range(4)]
    replica = Replica(client, tasks_url)
    replica.sync()
    for task in made[:3]:
        client.delete(f"{tasks_url}/{task['id']}")
    client.put(f"{tasks_url}/{made[3]['id']}", json={"title": "last"})

    lists_url = tasks_url.removesuffix("/tasks") + "/lists"
    gone = client.post(lists_url, json={"title": "gone"}).get_json()
    client.delete(f"{lists_url}/{gone['id']}")
    client.post(lists_url, json={"title": "kept"})

    answers = replica.sync(limit=2)

    entries = [
        sum(len(a[name]) for name in ("changes", "deleted", "lists", "deleted_lists"))
        for a in answers
    ]
    assert entries == [2, 2, 2]  # three deleted, one changed; a list gone, one new
    assert replica.tasks == listed(client, tasks_url)
    assert [item["title"] for item in replica.lists.values()] == ["kept"]


def token(app: Flask, user_id: str, *, position: int, age: timedelta) -> str:
    """A token as this server would have issued it `age` ago (the clock, injected)."""
    with app.app_context():
        issued = int((datetime.now(UTC) - age).timestamp())
        return sync.issue(user_id, sync.Since(position, position, issued))


def test_a_token_older_than_30_days_is_410(app: Flask, client: FlaskClient, user_id: str) -> None:
    url = f"/api/{user_id}/tasks/changes"
    old = token(app, user_id, position=0, age=timedelta(days=30, seconds=5))
    recent = token(app, user_id, position=0, age=timedelta(days=29, hours=23))

    body = assert_problem(client.get(url, query_string={"since": old}), 410)
    assert "without `since`" in body["detail"]
    assert client.get(url, query_string={"since": recent}).status_code == 200


def test_an_answer_renews_the_token(app: Flask, client: FlaskClient, tasks_url: str) -> None:
    user_id = tasks_url.split("/")[2]
    aged = token(app, user_id, position=0, age=timedelta(days=29))
    answer = client.get(f"{tasks_url}/changes", query_string={"since": aged}).get_json()
    with app.app_context():
        since = sync.read(
            user_id, answer["next"], now=time.time() + timedelta(days=2).total_seconds()
        )
    assert since.position == 0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "x" + t,
        lambda t: "not-a-token",
        lambda t: t.split(".")[0],
    ],
)
def test_an_altered_token_is_422(client: FlaskClient, tasks_url: str, mangle: Any) -> None:
    create(client, tasks_url, "x")
    next_token = client.get(f"{tasks_url}/changes").get_json()["next"]

    response = client.get(f"{tasks_url}/changes", query_string={"since": mangle(next_token)})

    body = assert_problem(response, 422)
    assert "since" in body["errors"]


def test_another_users_token_is_422(client: FlaskClient, tasks_url: str) -> None:
    other = f"/api/user-{uuid.uuid4().hex}/tasks"
    create(client, other, "theirs")
    theirs = client.get(f"{other}/changes").get_json()["next"]

    response = client.get(f"{tasks_url}/changes", query_string={"since": theirs})

    assert "another user" in assert_problem(response, 422)["errors"]["since"][0]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "since="])
def test_bad_parameters_are_422(client: FlaskClient, tasks_url: str, query: str) -> None:
    assert_problem(client.get(f"{tasks_url}/changes?{query}"), 422)


def test_the_changes_of_another_user_need_their_token(
    client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    response = client.get(
        f"{tasks_url}/changes", headers={"Authorization": f"Bearer {token_for('mallory')}"}
    )
    assert_problem(response, 403)


def test_the_purge_takes_expired_tombstones_only(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    for title in ("a", "b"):
        client.delete(f"{tasks_url}/{create(client, tasks_url, title)['id']}")
    replica = Replica(client, tasks_url)
    replica.sync()
    tombstones = TOMBSTONES

    def left() -> int:
        with app.extensions["tasks_api.engine"].connect() as conn:
            count = select(func.count()).where(tombstones.c.user_id == user_id)
            return int(conn.execute(count).scalar_one())

    with app.extensions["tasks_api.engine"].connect() as conn:
        repository.purge_tombstones(conn, now=datetime.now(UTC) + timedelta(days=29))
    assert left() == 2
    with app.extensions["tasks_api.engine"].connect() as conn:
        repository.purge_tombstones(conn, now=datetime.now(UTC) + timedelta(days=31))
    assert left() == 0
    # The client's token is fresh: syncing on after the purge misses nothing.
    task = create(client, tasks_url, "after")
    assert changed(replica.sync()) == [(task["id"], 1)]


def test_the_purge_command_reports_tombstones(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["purge"])
    assert result.exit_code == 0, result.output
    assert "expired tombstones" in result.output

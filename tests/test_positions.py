"""The manual order (API.md, "Organizing: manual order"): moves of tasks and lists, the
positions they leave (distinct, code-point ordered, at most 64 characters whatever the
history), paging by position, and respacing."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import String, bindparam, select, text

from tasks_api import positions
from tasks_api.positions import MAX_LENGTH, between, nth, position_between
from tests.support import assert_problem
from tests.test_listing import walk
from tests.test_lists import make_list, make_task


@pytest.fixture
def lists_url(user_id: str) -> str:
    return f"/api/{user_id}/lists"


def order(client: FlaskClient, url: str) -> list[str]:
    """Titles in the manual order, every page, checking the positions on the way."""
    tasks = walk(client, url + ("&" if "?" in url else "?") + "limit=7")
    keys = [task["position"] for task in tasks]
    assert keys == sorted(keys), "positions out of code-point order"
    assert len(set(keys)) == len(keys), "two siblings share a position"
    assert all(0 < len(key) <= MAX_LENGTH for key in keys)
    return [task["title"] for task in tasks]


def move(client: FlaskClient, tasks_url: str, task: dict[str, Any], **body: Any) -> Any:
    return client.post(f"{tasks_url}/{task['id']}/move", json=body)


@pytest.fixture
def five(client: FlaskClient, tasks_url: str) -> dict[str, dict[str, Any]]:
    return {title: make_task(client, tasks_url, title) for title in "abcde"}


def test_new_tasks_go_last_and_moves_put_them_where_they_are_asked(
    client: FlaskClient, tasks_url: str, five: dict[str, dict[str, Any]]
) -> None:
    inbox = f"{tasks_url}?list=inbox&sort=position"
    assert order(client, inbox) == list("abcde")

    assert move(client, tasks_url, five["a"], after=five["c"]["id"]).status_code == 200
    assert order(client, inbox) == list("bcade")
    move(client, tasks_url, five["e"], before=five["b"]["id"])
    assert order(client, inbox) == list("ebcad")
    move(client, tasks_url, five["c"], after=None)
    assert order(client, inbox) == list("cebad")
    moved = move(client, tasks_url, five["c"])
    assert order(client, inbox) == list("ebadc")
    assert moved.get_json()["version"] == 3  # one change per move; a move changes only it
    assert moved.headers["ETag"] == '"3"'
    assert [t["version"] for t in client.get(inbox).get_json()] == [2, 1, 2, 1, 3]


@pytest.mark.parametrize(
    ("who", "body"),
    [
        ("b", {"after": "a"}),
        ("b", {"before": "c"}),
        ("a", {"after": None}),
        ("e", {}),
        ("c", {"after": "b", "list_id": None}),
    ],
)
def test_a_move_to_where_the_task_is_changes_nothing(
    client: FlaskClient,
    tasks_url: str,
    five: dict[str, dict[str, Any]],
    who: str,
    body: dict[str, Any],
) -> None:
    sent = {name: value if value is None else five[value]["id"] for name, value in body.items()}

    response = move(client, tasks_url, five[who], **sent)

    assert response.status_code == 200
    assert response.get_json() == five[who]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"after": "self"}, "after"),
        ({"before": "self"}, "before"),
        ({"after": "missing"}, "after"),
        ({"after": "theirs"}, "after"),
        ({"after": "in-a-list"}, "after"),
        ({"after": "subtask"}, "after"),
        ({"before": None}, "before"),
        ({"after": "b", "before": "c"}, "before"),
        ({"after": "b", "list_id": "list"}, "after"),
        ({"after": "not-an-id"}, "after"),
    ],
)
def test_a_sibling_that_is_none_at_the_destination_is_422_and_nothing_moves(
    client: FlaskClient,
    tasks_url: str,
    lists_url: str,
    five: dict[str, dict[str, Any]],
    body: dict[str, Any],
    field: str,
) -> None:
    elsewhere = make_list(client, lists_url)
    ids = {
        **{title: task["id"] for title, task in five.items()},
        "self": five["a"]["id"],
        "missing": str(uuid.uuid4()),
        "theirs": make_task(client, f"/api/other-{uuid.uuid4().hex}/tasks", "x")["id"],
        "in-a-list": make_task(client, tasks_url, "filed", list_id=elsewhere["id"])["id"],
        "subtask": make_task(client, tasks_url, "step", parent_id=five["e"]["id"])["id"],
        "list": elsewhere["id"],
        "not-an-id": "not-an-id",
    }
    sent = {name: value if value is None else ids[value] for name, value in body.items()}

    problem = assert_problem(move(client, tasks_url, five["a"], **sent), 422)

    assert field in problem["errors"]
    assert order(client, f"{tasks_url}?list=inbox&sort=position") == list("abcde")
    assert client.get(f"{tasks_url}/{five['a']['id']}").get_json() == five["a"]


def test_a_move_to_another_list_goes_where_asked_there(
    client: FlaskClient, tasks_url: str, lists_url: str, five: dict[str, dict[str, Any]]
) -> None:
    work = make_list(client, lists_url, "Work")
    x = make_task(client, tasks_url, "x", list_id=work["id"])
    make_task(client, tasks_url, "y", list_id=work["id"])

    move(client, tasks_url, five["a"], list_id=work["id"], after=x["id"])
    move(client, tasks_url, five["b"], list_id=work["id"], before=x["id"])
    move(client, tasks_url, five["c"], list_id=work["id"])

    assert order(client, f"{tasks_url}?list={work['id']}&sort=position") == [
        "b",
        "x",
        "a",
        "y",
        "c",
    ]
    assert order(client, f"{tasks_url}?list=inbox&sort=position") == ["d", "e"]
    assert_problem(client.get(f"{tasks_url}?sort=position"), 422)


def test_any_sequence_of_moves_leaves_the_order_a_replay_gives(
    client: FlaskClient, tasks_url: str
) -> None:
    rng = random.Random(19)
    tasks = [make_task(client, tasks_url, f"t{n}") for n in range(12)]
    model = [task["title"] for task in tasks]
    by_title = {task["title"]: task for task in tasks}
    for step in range(150):
        task = rng.choice(tasks)
        title = task["title"]
        others = [t for t in model if t != title]
        kind = rng.choice(["after", "before", "first", "last", "between-first-two"])
        model.remove(title)
        if kind == "first":
            body: dict[str, Any] = {"after": None}
            model.insert(0, title)
        elif kind == "last":
            body = {}
            model.append(title)
        else:
            # Often into the same gap: that is where keys grow longest.
            anchor = others[0] if kind == "between-first-two" else rng.choice(others)
            side = "after" if kind != "before" else "before"
            body = {side: by_title[anchor]["id"]}
            at = model.index(anchor) + (1 if side == "after" else 0)
            model.insert(at, title)
        assert move(client, tasks_url, task, **body).status_code == 200, (step, body)
    assert order(client, f"{tasks_url}?list=inbox&sort=position") == model


def test_paging_by_position_while_others_move_sees_each_unmoved_task_once(
    client: FlaskClient, tasks_url: str
) -> None:
    tasks = [make_task(client, tasks_url, f"t{n:02}") for n in range(20)]
    url = f"{tasks_url}?list=inbox&sort=position&limit=5"
    moved: set[str] = set()

    def shuffle(page: int) -> None:
        if page == 1:  # one already seen to the end, one not yet seen to the front
            for task, body in ((tasks[1], {}), (tasks[15], {"after": None})):
                move(client, tasks_url, task, **body)
                moved.add(task["title"])

    seen = [task["title"] for task in walk(client, url, shuffle)]

    unmoved = [task["title"] for task in tasks if task["title"] not in moved]
    assert [title for title in seen if title not in moved] == unmoved


def test_respacing_makes_room_bumps_only_the_changed_tasks_and_feeds_them(
    app: Flask, backend: str, client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    tasks = [make_task(client, tasks_url, f"t{n}") for n in range(6)]
    # t1 and t2 get keys at the length limit, one digit apart and above t0's: no key fits
    # between them.
    crowded = [tasks[0]["position"] + "4" * 53 + digit for digit in "12"]
    assert all(len(key) == MAX_LENGTH for key in crowded)
    with app.extensions["tasks_api.engine"].connect() as conn:
        for task, key in zip(tasks[1:3], crowded, strict=True):
            task_id = uuid.UUID(task["id"])
            conn.execute(
                text("UPDATE tasks SET position = :key WHERE user_id = :u AND id = :id"),
                {"key": key, "u": user_id, "id": task_id.hex if backend == "sqlite" else task_id},
            )
    since = client.get(f"{tasks_url}/changes").get_json()["next"]

    response = move(client, tasks_url, tasks[5], after=tasks[1]["id"])

    assert response.status_code == 200
    assert order(client, f"{tasks_url}?list=inbox&sort=position") == [
        "t0",
        "t1",
        "t5",
        "t2",
        "t3",
        "t4",
    ]
    listed = {
        task["title"]: task
        for task in client.get(f"{tasks_url}?list=inbox&sort=position").get_json()
    }
    assert [listed[f"t{n}"]["position"] for n in (0, 1, 5, 2, 3, 4)] == [nth(n) for n in range(6)]
    changed = client.get(f"{tasks_url}/changes?since={since}").get_json()["changes"]
    # Ranks 0 to 5: t0's key, 5000000001, became 5000000000, t1's and t2's changed, t5
    # moved; t3 and t4 had the keys of their ranks already, and are not rewritten.
    assert {task["title"]: task["version"] for task in changed} == {
        "t0": 2,
        "t1": 2,
        "t2": 2,
        "t5": 2,
    }
    # A task whose key stays is not rewritten: respace again, with t0 kept.
    with app.extensions["tasks_api.engine"].connect() as conn:
        conn.execute(
            text("UPDATE tasks SET position = :key WHERE user_id = :u AND position = :old"),
            {"key": f"{nth(0)}{'4' * 53}1", "u": user_id, "old": nth(1)},
        )
        conn.execute(
            text("UPDATE tasks SET position = :key WHERE user_id = :u AND position = :old"),
            {"key": f"{nth(0)}{'4' * 53}2", "u": user_id, "old": nth(2)},
        )
    move(client, tasks_url, tasks[3], after=tasks[1]["id"])
    versions = {t["title"]: t["version"] for t in client.get(f"{tasks_url}?limit=10").get_json()}
    assert versions["t0"] == 2  # nth(0) already: unchanged


def test_lists_move_in_the_users_order(client: FlaskClient, lists_url: str) -> None:
    made = {title: make_list(client, lists_url, title) for title in "pqrs"}

    def titles() -> list[str]:
        listed = walk(client, f"{lists_url}?limit=3")
        keys = [item["position"] for item in listed]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        return [item["title"] for item in listed]

    def move_list(title: str, **body: Any) -> Any:
        return client.post(f"{lists_url}/{made[title]['id']}/move", json=body)

    assert move_list("p", after=made["r"]["id"]).get_json()["version"] == 2
    assert titles() == list("qrps")
    move_list("s", before=made["q"]["id"])
    assert titles() == list("sqrp")
    move_list("r", after=None)
    assert titles() == list("rsqp")
    move_list("r")
    assert titles() == list("sqpr")
    unmoved = move_list("r")  # already last
    assert unmoved.get_json()["version"] == 3  # moved twice before
    for body, field in (
        ({"after": made["r"]["id"]}, "after"),
        ({"before": str(uuid.uuid4())}, "before"),
        ({"before": None}, "before"),
        ({"after": None, "before": made["s"]["id"]}, "before"),
    ):
        assert field in assert_problem(move_list("r", **body), 422)["errors"]
    assert titles() == list("sqpr")


def test_postgresql_computes_the_same_keys_as_python(app: Flask, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite calls the Python itself")
    rng = random.Random(7)
    keys = [nth(0)]
    pairs: list[tuple[str | None, str | None]] = [
        (None, None),
        (None, "0000000001"),
        ("9999999999", None),
    ]
    for _ in range(400):
        at = rng.randrange(len(keys) + 1)
        pair = (keys[at - 1] if at else None, keys[at] if at < len(keys) else None)
        pairs.append(pair)
        key = between(*pair)
        if key is not None:
            keys.insert(at, key)
    low, high = keys[0], keys[1]
    for _ in range(250):  # into one gap, past the length limit
        pairs.append((low, high))
        high = between(low, high) or high
    query = select(position_between(bindparam("a", type_=String()), bindparam("b", type_=String())))
    with app.extensions["tasks_api.engine"].connect() as conn:
        for a, b in pairs:
            assert conn.execute(query, {"a": a, "b": b}).scalar() == between(a, b), (a, b)


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, None), ("5000000000", None), (None, "5000000000"), ("5000000000", "5000000001")],
)
def test_between_is_strictly_between_and_short(before: str | None, after: str | None) -> None:
    key = between(before, after)
    assert key is not None and len(key) <= positions.MAX_LENGTH
    assert (before is None or before < key) and (after is None or key < after)


def test_a_gap_takes_over_200_moves_before_it_must_be_respaced() -> None:
    low, high, moves = str(nth(0)), str(nth(1)), 0
    while (key := between(low, high)) is not None:
        assert low < key < high and len(key) <= MAX_LENGTH
        high, moves = key, moves + 1
    assert moves > 200

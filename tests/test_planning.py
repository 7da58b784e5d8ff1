"""Tasks as people plan them: status, priority, due date and tags, on every write and in
lists (API.md, "The task" and "Lists")."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import NullPool, create_engine, update

from tasks_api.models import TASKS
from tasks_api.repository import listing as repository
from tests.support import assert_problem
from tests.test_listing import create, next_url, walk

NEW_SORTS = ["due_date", "-due_date", "priority", "-priority"]
RANK = {"low": 1, "medium": 2, "high": 3, "urgent": 4}


def stored(client: FlaskClient, tasks_url: str) -> list[dict[str, Any]]:
    joiner = "&" if "?" in tasks_url else "?"
    body: list[dict[str, Any]] = client.get(f"{tasks_url}{joiner}limit=500").get_json()
    return body


def put(client: FlaskClient, url: str, **fields: Any) -> dict[str, Any]:
    response = client.put(url, json=fields)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


# --- what real clients send ---------------------------------------------------------


def test_a_board_creates_with_status_and_priority_and_moves_cards_with_put(
    client: FlaskClient, tasks_url: str
) -> None:
    body = {"title": "Ship", "description": "v2", "priority": "high", "status": "in_progress"}
    created = create(client, tasks_url, **body)  # the form sends all four, always

    assert {k: created[k] for k in body} == body
    assert created["completed"] is False and created["completed_at"] is None
    moved = put(client, f"{tasks_url}/{created['id']}", status="done")
    assert moved["status"] == "done" and moved["completed"] is True
    assert moved["completed_at"] == moved["updated_at"]
    back = put(client, f"{tasks_url}/{created['id']}", status="in_progress")
    assert back["completed"] is False and back["completed_at"] is None
    assert back["version"] == 3


# --- status and completed are one state -----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "completed"),
    [
        ({}, "todo", False),
        ({"completed": False}, "todo", False),
        ({"completed": True}, "done", True),
        ({"status": "in_progress"}, "in_progress", False),
        ({"status": "done"}, "done", True),
        ({"status": "todo", "completed": False}, "todo", False),
        ({"status": "in_progress", "completed": False}, "in_progress", False),
        ({"status": "done", "completed": True}, "done", True),
    ],
)
def test_create_sets_one_state(
    client: FlaskClient, tasks_url: str, fields: dict[str, Any], status: str, completed: bool
) -> None:
    task = create(client, tasks_url, "t", **fields)

    assert (task["status"], task["completed"]) == (status, completed)
    assert task["completed_at"] == (task["created_at"] if completed else None)


CONTRADICTIONS = [
    {"status": "done", "completed": False},
    {"status": "todo", "completed": True},
    {"status": "in_progress", "completed": True},
]


@pytest.mark.parametrize("fields", CONTRADICTIONS)
def test_contradicting_status_and_completed_are_422_naming_both(
    client: FlaskClient, tasks_url: str, task_url: str, task: dict[str, Any], fields: Any
) -> None:
    created = assert_problem(client.post(tasks_url, json={"title": "t", **fields}), 422)
    updated = assert_problem(client.put(task_url, json=fields), 422)

    assert set(created["errors"]) == set(updated["errors"]) == {"status", "completed"}
    assert stored(client, tasks_url) == [task]


@pytest.mark.parametrize(
    ("start", "change", "status", "changed"),
    [
        ("todo", {"completed": False}, "todo", False),
        ("in_progress", {"completed": False}, "in_progress", False),
        ("done", {"completed": False}, "todo", True),
        ("in_progress", {"completed": True}, "done", True),
        ("done", {"completed": True}, "done", False),
        ("done", {"status": "done"}, "done", False),
        ("todo", {"status": "in_progress"}, "in_progress", True),
        ("done", {"status": "in_progress"}, "in_progress", True),
        ("in_progress", {"status": "todo", "completed": False}, "todo", True),
    ],
)
def test_put_keeps_status_and_completed_one_state(
    client: FlaskClient,
    tasks_url: str,
    start: str,
    change: dict[str, Any],
    status: str,
    changed: bool,
) -> None:
    before = create(client, tasks_url, "t", status=start)

    after = put(client, f"{tasks_url}/{before['id']}", **change)

    assert after["status"] == status
    assert after["completed"] is (status == "done")
    assert (after["completed_at"] is None) is (status != "done")
    if status == "done" == start:
        assert after["completed_at"] == before["completed_at"]
    assert after["version"] == before["version"] + changed
    assert (after["updated_at"] != before["updated_at"]) is changed


@pytest.mark.parametrize(
    ("start", "flipped"), [("todo", "done"), ("in_progress", "done"), ("done", "todo")]
)
def test_toggle_moves_status(client: FlaskClient, tasks_url: str, start: str, flipped: str) -> None:
    task = create(client, tasks_url, "t", status=start)

    toggled = client.patch(f"{tasks_url}/{task['id']}/complete").get_json()

    assert toggled["status"] == flipped
    assert toggled["completed"] is (flipped == "done")
    assert toggled["completed_at"] == (toggled["updated_at"] if flipped == "done" else None)
    assert toggled["version"] == 2


@pytest.mark.parametrize(
    ("start", "completed", "status"),
    [("in_progress", False, "in_progress"), ("in_progress", True, "done"), ("done", False, "todo")],
)
def test_setting_completed_with_patch_follows_the_same_rules(
    client: FlaskClient, tasks_url: str, start: str, completed: bool, status: str
) -> None:
    task = create(client, tasks_url, "t", status=start)

    after = client.patch(f"{tasks_url}/{task['id']}/complete", json={"completed": completed})

    assert after.get_json()["status"] == status
    assert after.get_json()["version"] == 1 + (status != start)


# --- priority, due date, tags ---------------------------------------------------------


def test_priority_due_date_and_tags_are_stored_and_replaced(
    client: FlaskClient, tasks_url: str
) -> None:
    task = create(
        client, tasks_url, "t", priority="urgent", due_date="2026-12-01", tags=["home", "Work"]
    )
    assert (task["priority"], task["due_date"], task["tags"]) == (
        "urgent",
        "2026-12-01",
        ["home", "Work"],
    )
    url = f"{tasks_url}/{task['id']}"

    changed = put(client, url, priority="low", due_date=None, tags=["errands"])

    assert (changed["priority"], changed["due_date"], changed["tags"]) == ("low", None, ["errands"])
    assert client.get(url).get_json() == changed
    assert put(client, url, tags=[])["tags"] == []


@pytest.mark.parametrize("day", ["2026-12-01", "2024-02-29", "0001-01-01", "9999-12-31"])
def test_due_date_is_the_same_day_everywhere(client: FlaskClient, tasks_url: str, day: str) -> None:
    task = create(client, tasks_url, "t", due_date=day)

    assert task["due_date"] == day
    assert client.get(f"{tasks_url}/{task['id']}").get_json()["due_date"] == day
    assert [t["due_date"] for t in stored(client, tasks_url)] == [day]


def test_tags_are_trimmed_and_repeats_differing_in_case_dropped(
    client: FlaskClient, tasks_url: str
) -> None:
    sent = [" Home ", "home", "\tÜber\n", "HOME", "über", "x" * 50, "a b", "ÜBER "]

    task = create(client, tasks_url, "t", tags=sent)

    assert task["tags"] == ["Home", "Über", "x" * 50, "a b"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "TO_DO"),
        ("status", "DONE"),
        ("status", "review"),
        ("status", None),
        ("status", 1),
        ("priority", "URGENT"),
        ("priority", "none"),
        ("priority", None),
        ("priority", 3),
        ("due_date", "2026-12-1"),
        ("due_date", "20261201"),
        ("due_date", "2026-W48-1"),
        ("due_date", "2026-02-30"),
        ("due_date", "2026-12-01T00:00:00Z"),
        ("due_date", "tomorrow"),
        ("due_date", 20261201),
        ("tags", None),
        ("tags", "home"),
        ("tags", [None]),
        ("tags", [1]),
        ("tags", [""]),
        ("tags", ["  \t "]),
        ("tags", ["x" * 51]),
        ("tags", ["a\x01b"]),
        ("tags", ["a\tb"]),
        ("tags", ["a\x7fb"]),
        ("tags", ["a\x00b"]),
        ("tags", [f"t{n}" for n in range(21)]),
        ("tags", ["same"] * 21),
        ("completed", None),
    ],
)
def test_bad_values_are_422_on_create_and_put_and_change_nothing(
    client: FlaskClient,
    tasks_url: str,
    task_url: str,
    task: dict[str, Any],
    field: str,
    value: Any,
) -> None:
    created = assert_problem(client.post(tasks_url, json={"title": "t", field: value}), 422)
    updated = assert_problem(client.put(task_url, json={field: value}), 422)

    assert list(created["errors"]) == list(updated["errors"]) == [field]
    for problem in (created, updated):  # an item's errors too: one list of messages
        assert all(isinstance(message, str) for message in problem["errors"][field])
    assert stored(client, tasks_url) == [task]


def test_an_item_error_says_which_item(client: FlaskClient, tasks_url: str) -> None:
    body = {"title": "t", "tags": ["ok", "a\x01b"]}

    problem = assert_problem(client.post(tasks_url, json=body), 422)

    assert problem["errors"] == {"tags": ["Item 1: Must not contain control characters."]}


def test_only_description_and_due_date_take_null(client: FlaskClient, tasks_url: str) -> None:
    task = create(client, tasks_url, "t", description=None, due_date=None)

    assert task["description"] is None and task["due_date"] is None


def test_a_write_that_changes_nothing_once_normalised_keeps_version_and_updated_at(
    client: FlaskClient, tasks_url: str
) -> None:
    task = create(
        client,
        tasks_url,
        "Plan",
        status="in_progress",
        priority="high",
        due_date="2026-12-01",
        tags=["Home", "work"],
    )

    again = put(
        client,
        f"{tasks_url}/{task['id']}",
        title="  Plan ",
        status="in_progress",
        completed=False,
        priority="high",
        due_date="2026-12-01",
        tags=[" Home", "HOME", "work "],
    )

    assert again == task
    recased = put(client, f"{tasks_url}/{task['id']}", tags=["home", "work"])
    assert recased["tags"] == ["home", "work"]  # a new spelling is a change
    assert recased["version"] == 2


def test_every_field_with_its_largest_value_is_accepted(
    client: FlaskClient, tasks_url: str
) -> None:
    tags = [f"{n:02}" + "x" * 48 for n in range(20)]
    task = create(client, tasks_url, "t" * 500, description="d" * 8000, tags=tags)

    assert task["tags"] == tags


# --- filters ------------------------------------------------------------------------


@pytest.fixture
def planned(client: FlaskClient, tasks_url: str) -> dict[str, str]:
    """Six tasks across states, priorities, days and tags; title -> id."""
    rows = [
        ("a", "todo", "low", "2026-12-01", ["Home"]),
        ("b", "in_progress", "high", "2026-12-02", ["home", "work"]),
        ("c", "done", "urgent", "2026-12-03", ["Work"]),
        ("d", "todo", "medium", None, ["errands", "HOME"]),
        ("e", "in_progress", "low", "2026-11-30", []),
        ("f", "done", "high", None, ["Über"]),
    ]
    return {
        title: create(
            client, tasks_url, title, status=status, priority=priority, due_date=due, tags=tags
        )["id"]
        for title, status, priority, due, tags in rows
    }


@pytest.mark.usefixtures("planned")
@pytest.mark.parametrize(
    ("query", "titles"),
    [
        ("status=todo", "ad"),
        ("status=todo,in_progress", "abde"),
        ("status=done&completed=true", "cf"),
        ("status=done&completed=false", ""),
        ("status=in_progress,done&completed=false", "be"),
        ("completed=false", "abde"),
        ("priority=high", "bf"),
        ("priority=low,urgent", "ace"),
        ("tag=home", "abd"),
        ("tag=HOME&tag=work", "b"),
        ("tag=%20Work%20", "bc"),
        ("tag=über", "f"),
        ("tag=nothing", ""),
        ("due_before=2026-12-02", "abe"),
        ("due_after=2026-12-02", "bc"),
        ("due_after=2026-12-01&due_before=2026-12-02", "ab"),
        ("due_after=2026-12-03&due_before=2026-12-01", ""),
        ("status=todo,in_progress&priority=low,high&tag=home&due_before=2026-12-31", "ab"),
        ("status=todo,in_progress&priority=low,high&tag=home&q=b", "b"),
    ],
)
def test_filters_and_their_combinations(
    client: FlaskClient, tasks_url: str, query: str, titles: str
) -> None:
    response = client.get(f"{tasks_url}?{query}&sort=title")

    assert response.status_code == 200, response.get_json()
    assert "".join(t["title"] for t in response.get_json()) == titles


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=", "status"),
        ("status=TODO", "status"),
        ("status=todo,,done", "status"),
        ("priority=urgent,critical", "priority"),
        ("tag=", "tag"),
        ("tag=" + "x" * 51, "tag"),
        ("tag=a%01b", "tag"),
        ("&".join(f"tag=t{n}" for n in range(21)), "tag"),
        ("due_before=2026-13-01", "due_before"),
        ("due_after=20261201", "due_after"),
        ("due_after=", "due_after"),
    ],
)
def test_bad_filters_are_422(client: FlaskClient, tasks_url: str, query: str, field: str) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?{query}"), 422)

    assert list(problem["errors"]) == [field]
    assert all(isinstance(message, str) for message in problem["errors"][field])


# --- sorts and paging ---------------------------------------------------------------


def expected(tasks: list[dict[str, Any]], sort: str) -> list[str]:
    """The contract's order: by rank or day (undated last either way), ties newest
    first (created_at, then id, descending)."""

    def newest_first(task: dict[str, Any]) -> tuple[str, str]:
        return task["created_at"], uuid.UUID(task["id"]).hex

    ordered = sorted(tasks, key=newest_first, reverse=True)  # stable sorts keep ties so
    if sort.lstrip("-") == "priority":
        ordered.sort(key=lambda t: RANK[t["priority"]], reverse=sort.startswith("-"))
    else:
        dated = [t for t in ordered if t["due_date"] is not None]
        dated.sort(key=lambda t: t["due_date"], reverse=sort.startswith("-"))
        ordered = dated + [t for t in ordered if t["due_date"] is None]
    return [t["id"] for t in ordered]


@pytest.mark.usefixtures("planned")
@pytest.mark.parametrize(
    ("sort", "titles"),
    [
        ("priority", "eadfbc"),
        ("-priority", "cfbdea"),
        ("due_date", "eabcfd"),
        ("-due_date", "cbaefd"),
    ],
)
def test_new_sorts(client: FlaskClient, tasks_url: str, sort: str, titles: str) -> None:
    found = client.get(f"{tasks_url}?sort={sort}").get_json()

    assert "".join(t["title"] for t in found) == titles


def set_created(app: Flask, user_id: str, moment: datetime) -> None:
    with app.extensions["tasks_api.engine"].connect() as conn:
        conn.execute(update(TASKS).where(TASKS.c.user_id == user_id).values(created_at=moment))


@pytest.mark.parametrize("sort", NEW_SORTS)
@pytest.mark.parametrize("same_moment", [False, True], ids=["times", "all-at-once"])
def test_paging_through_each_new_sort_with_ties_and_undated_tasks(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str, sort: str, same_moment: bool
) -> None:
    priorities = ["low", "medium", "high", "urgent"]
    for n in range(23):
        due = None if n % 3 == 0 else f"2026-12-0{1 + n % 2}"
        create(client, tasks_url, f"t{n}", priority=priorities[n % 4 // 2 * 3], due_date=due)
    if same_moment:  # ties all the way down to the id
        set_created(app, user_id, datetime(2026, 11, 25, 12, 0, tzinfo=UTC))

    paged = walk(client, f"{tasks_url}?sort={sort}&limit=4")

    whole = stored(client, tasks_url)
    assert len(paged) == 23
    assert [t["id"] for t in paged] == expected(whole, sort)


@pytest.mark.parametrize("sort", NEW_SORTS)
def test_filtered_pages_in_a_new_sort_hold_only_matches(
    client: FlaskClient, tasks_url: str, sort: str
) -> None:
    for n in range(15):
        tags = ["Even"] if n % 2 == 0 else ["odd"]
        due = None if n % 5 == 0 else f"2026-12-{10 + n % 3}"
        create(client, tasks_url, f"t{n}", tags=tags, due_date=due, priority="high")

    paged = walk(client, f"{tasks_url}?sort={sort}&limit=2&tag=even&priority=high,low")

    assert [t["id"] for t in paged] == expected(stored(client, f"{tasks_url}?tag=EVEN"), sort)
    assert len(paged) == 8


def test_next_link_keeps_the_new_filters(client: FlaskClient, tasks_url: str) -> None:
    for n in range(3):
        create(client, tasks_url, f"t{n}", tags=["a", "b"], due_date="2026-12-01", priority="low")
    query = (
        "sort=-priority&status=todo,in_progress&priority=low&tag=a&tag=B"
        "&due_after=2026-11-01&due_before=2026-12-31&limit=2"
    )

    response = client.get(f"{tasks_url}?{query}")
    link = next_url(response)

    assert link is not None
    assert re.search(r"status=todo%2Cin_progress|status=todo,in_progress", link), link
    assert "tag=a&tag=B" in link and "due_after=2026-11-01" in link, link
    assert len(client.get(link).get_json()) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"status": "todo"},
        {"priority": "low,high"},
        {"tag": "b"},
        {"due_before": "2026-12-30"},
        {"due_after": "2026-01-01"},
        {"sort": "priority"},
    ],
)
def test_a_cursor_used_with_another_new_filter_is_422(
    client: FlaskClient, tasks_url: str, other: dict[str, str]
) -> None:
    for n in range(3):
        create(client, tasks_url, f"t{n}", tags=["a"], due_date="2026-12-01")
    first = client.get(f"{tasks_url}?sort=-priority&tag=a&limit=2")
    link = next_url(first)
    assert link is not None
    cursor = link.split("cursor=")[1].split("&")[0]

    query = {"sort": "-priority", "tag": "a", "limit": 2, "cursor": cursor, **other}
    problem = assert_problem(client.get(tasks_url, query_string=query), 422)

    assert list(problem["errors"]) == ["cursor"]


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_no_time_zone_shifts_a_due_date(
    app: Flask, backend: str, client: FlaskClient, tasks_url: str, user_id: str, zone: str
) -> None:
    # A session 14 hours ahead of UTC, or 11 behind, reads and filters the same day.
    task = create(client, tasks_url, "t", due_date="2026-12-31")
    day = date(2026, 12, 31)
    url = app.extensions["tasks_api.engine"].url
    engine = create_engine(url, poolclass=NullPool)  # a session of its own, then gone
    try:
        with engine.connect() as conn:
            if backend != "sqlite":
                conn.exec_driver_sql(f"SET TIME ZONE '{zone}'")
            filters = repository.Filters(due_after=day, due_before=day)
            rows = repository.list_tasks(conn, user_id=user_id, filters=filters, limit=5)
    finally:
        engine.dispose()

    assert [(str(row["id"]), row["due_date"]) for row in rows] == [(task["id"], day)]

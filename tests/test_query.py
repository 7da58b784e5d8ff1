"""How query parameters are sent (API.md, "Listing tasks", its last point): arrays as
the common clients send them, and nothing silently dropped or half-read, on every
route that takes query parameters."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support import assert_problem
from tests.test_listing import create, walk


@pytest.fixture
def planned(client: FlaskClient, tasks_url: str) -> None:
    """One task per status, and one per priority (the titles say which)."""
    for status in ("todo", "in_progress", "done"):
        create(client, tasks_url, status, status=status, priority="medium")
    for priority in ("low", "high", "urgent"):
        create(client, tasks_url, priority, status="todo", priority=priority)


def titles(client: FlaskClient, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200, response.get_json()
    return {task["title"] for task in response.get_json()}


TODO = {"todo", "low", "high", "urgent"}


@pytest.mark.usefixtures("planned")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # As openapi-fetch and other generated clients send arrays (form, exploded).
        ("status=todo&status=in_progress", TODO | {"in_progress"}),
        ("status=todo,in_progress", TODO | {"in_progress"}),
        ("status=todo,done&status=in_progress", TODO | {"in_progress", "done"}),
        ("status=done&status=done", {"done"}),
        ("status=done,done&status=done", {"done"}),
        ("priority=low&priority=urgent", {"low", "urgent"}),
        ("priority=low,high", {"low", "high"}),
        ("priority=low,high&priority=urgent&priority=low", {"low", "high", "urgent"}),
        ("status=todo&status=done&priority=medium&priority=high", {"todo", "done", "high"}),
    ],
)
def test_status_and_priority_take_repeats_commas_or_both(
    client: FlaskClient, tasks_url: str, query: str, expected: set[str]
) -> None:
    assert titles(client, f"{tasks_url}?{query}") == expected


@pytest.mark.usefixtures("planned")
def test_a_repeated_status_pages_through_with_the_same_filter(
    client: FlaskClient, tasks_url: str
) -> None:
    seen = walk(client, f"{tasks_url}?status=in_progress&status=done&limit=1")

    # One a page: the second came by the first page's next link, its filter kept.
    assert sorted(task["title"] for task in seen) == ["done", "in_progress"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=todo&status=nope", "status"),
        ("status=todo&status=", "status"),
        ("priority=low&priority=critical", "priority"),
        ("priority=low,high&priority=Low", "priority"),
    ],
)
def test_a_bad_value_among_repeats_is_422_naming_the_parameter(
    client: FlaskClient, tasks_url: str, query: str, field: str
) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?{query}"), 422)

    assert list(problem["errors"]) == [field]


def test_repeated_tags_must_all_match_and_a_comma_is_part_of_a_tag(
    client: FlaskClient, tasks_url: str
) -> None:
    create(client, tasks_url, "both", tags=["a", "b"])
    create(client, tasks_url, "a only", tags=["a"])
    create(client, tasks_url, "b only", tags=["b"])
    create(client, tasks_url, "comma", tags=["a,b"])

    assert titles(client, f"{tasks_url}?tag=a&tag=b") == {"both"}
    assert titles(client, f"{tasks_url}?tag=a") == {"both", "a only"}
    assert titles(client, f"{tasks_url}?tag=a,b") == {"comma"}
    assert titles(client, f"{tasks_url}?tag=a%2Cb") == {"comma"}


# Each single-valued parameter of each route, with a value that fits its schema.
SINGLE = {
    "tasks": {
        "completed": "true",
        "due_before": "2026-12-01",
        "due_after": "2026-12-01",
        "q": "milk",
        "list": "inbox",
        "parent": "none",
        "sort": "title",
        "limit": "5",
        "cursor": "x",
    },
    "lists": {"limit": "5", "cursor": "x"},
    "changes": {"since": "x", "limit": "5"},
}
ROUTES = {
    "tasks": "/api/{user}/tasks",
    "lists": "/api/{user}/lists",
    "changes": "/api/{user}/tasks/changes",
}


def route_url(route: str, user_id: str) -> str:
    return ROUTES[route].format(user=user_id)


@pytest.mark.parametrize(
    ("route", "name", "value"),
    [(route, name, value) for route, names in SINGLE.items() for name, value in names.items()],
)
@pytest.mark.parametrize("second", ["same", "other"])
def test_a_single_valued_parameter_given_twice_is_422_naming_it(
    client: FlaskClient, user_id: str, route: str, name: str, value: str, second: str
) -> None:
    again = value if second == "same" else ("false" if name == "completed" else value + "0")
    url = f"{route_url(route, user_id)}?{name}={value}&{name}={again}"

    problem = assert_problem(client.get(url), 422)

    assert list(problem["errors"]) == [name]
    assert any("once" in message for message in problem["errors"][name])


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(
    "name",
    ["status[]", "tag[]", "priority[]", "foo", "Limit", "limit[]", "since ", "_"],
)
def test_a_parameter_the_route_does_not_define_is_422_naming_it(
    client: FlaskClient, user_id: str, route: str, name: str
) -> None:
    response = client.get(route_url(route, user_id), query_string={name: "todo"})

    problem = assert_problem(response, 422)
    assert list(problem["errors"]) == [name]


def test_a_parameter_of_another_route_is_422(client: FlaskClient, user_id: str) -> None:
    for route, name in (("lists", "status"), ("changes", "cursor"), ("tasks", "since")):
        problem = assert_problem(client.get(f"{route_url(route, user_id)}?{name}=x"), 422)
        assert list(problem["errors"]) == [name]


def test_brackets_get_a_hint(client: FlaskClient, tasks_url: str) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?status[]=todo&status[]=done"), 422)

    (message,) = problem["errors"]["status[]"]
    assert "`status` without brackets" in message


def test_every_offending_parameter_is_named_at_once(client: FlaskClient, tasks_url: str) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?foo=1&sort=title&sort=title&limit=0"), 422)

    assert set(problem["errors"]) == {"foo", "sort", "limit"}


@pytest.mark.parametrize("route", list(ROUTES))
def test_parameters_sent_once_still_work(client: FlaskClient, user_id: str, route: str) -> None:
    response = client.get(f"{route_url(route, user_id)}?limit=5")

    assert response.status_code == 200, response.get_json()


def test_a_route_without_query_parameters_ignores_a_query_string(
    client: FlaskClient, task_url: str, user_id: str
) -> None:
    # The contract's rule is for routes that take query parameters; a cache-busting
    # `?_=...` on the others keeps working.
    assert client.get(f"{task_url}?_=1700000000&_=1").status_code == 200
    assert client.get("/health?foo=1").status_code == 200
    body: dict[str, Any] = client.put(f"{task_url}?foo=1", json={"title": "x"}).get_json()
    assert body["title"] == "x"

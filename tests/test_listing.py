"""Listing tasks: filters, search, every sort, keyset pages and their cursors."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text, update

from tasks_api import create_app, db
from tasks_api.config import Settings
from tasks_api.models import TASKS
from tasks_api.repository import listing as repository
from tests.support import SECRET, UserClient, assert_problem

SORTS = ["-created_at", "created_at", "-updated_at", "updated_at", "title", "-title"]
# With the sorts whose ties go newest first (tests/test_planning.py checks their order).
ALL_SORTS = [*SORTS, "due_date", "-due_date", "priority", "-priority"]
LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


def create(client: FlaskClient, tasks_url: str, title: str, **fields: Any) -> dict[str, Any]:
    response = client.post(tasks_url, json={"title": title, **fields})
    assert response.status_code == 201
    body: dict[str, Any] = response.get_json()
    return body


def next_url(response: Any) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = LINK.match(link)
    assert match, link
    parts = urlsplit(match["url"])
    assert parts.scheme == "http" and parts.netloc == "localhost"
    return f"{parts.path}?{parts.query}"


def walk(client: FlaskClient, url: str, between: Any = None) -> list[dict[str, Any]]:
    """Follow the next links from `url`; call `between(page_number)` after each page."""
    seen: list[dict[str, Any]] = []
    pages = 0
    next_page: str | None = url
    while next_page is not None:
        response = client.get(next_page)
        assert response.status_code == 200, response.get_json()
        seen.extend(response.get_json())
        pages += 1
        assert pages < 100
        if between is not None:
            between(pages)
        next_page = next_url(response)
    return seen


def sort_key(sort: str) -> Any:
    field = sort.lstrip("-")

    def key(task: dict[str, Any]) -> tuple[Any, str]:
        value = task[field].lower() if field == "title" else task[field]
        return value, uuid.UUID(task["id"]).hex

    return key


def expected_order(tasks: list[dict[str, Any]], sort: str) -> list[str]:
    ordered = sorted(tasks, key=sort_key(sort), reverse=sort.startswith("-"))
    return [t["id"] for t in ordered]


def set_times(app: Flask, user_id: str, **values: datetime) -> None:
    """Give all of a user's tasks the same timestamps, to make ties."""
    with app.extensions["tasks_api.engine"].connect() as conn:
        conn.execute(update(TASKS).where(TASKS.c.user_id == user_id).values(**values))


# --- filters and search -------------------------------------------------------------


def test_a_page_and_a_read_show_each_task_exactly_as_its_create_answered_it(
    client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    # On PostgreSQL the database writes the JSON of a page and of a read itself
    # (repository.tasks.TASK_JSON); a create's answer goes through schemas.tasks.dump_task.
    # Same fields, order and text.
    folder = client.post(f"/api/{user_id}/lists", json={"title": "Ξ folder"}).get_json()
    sent: list[dict[str, Any]] = [
        {"title": 'quotes " and \\ back\u0001slash\ttab\nline', "description": None},
        {"title": "Café ☕ 買い物 😀", "description": "ⓓ" * 50, "tags": ["a,b", "Über"]},
        {"title": "dated", "due_date": "0999-01-02", "priority": "urgent", "completed": True},
        {"title": "in a list", "list_id": folder["id"], "status": "in_progress"},
    ]
    created = [client.post(tasks_url, json=body).get_json() for body in sent]
    created.append(
        client.post(tasks_url, json={"title": "a step", "parent_id": created[0]["id"]}).get_json()
    )

    page = client.get(tasks_url).get_json()
    one_by_one = [client.get(f"{tasks_url}/{task['id']}").get_json() for task in page]
    answered = {task["id"]: task for task in created}

    as_created = [answered[task["id"]] for task in page]
    assert page == one_by_one == as_created
    assert [list(task) for task in page] == [list(task) for task in as_created]
    assert [list(task) for task in one_by_one] == [list(task) for task in as_created]


def test_completed_filter(client: FlaskClient, tasks_url: str) -> None:
    done = [create(client, tasks_url, f"done {n}", completed=True)["id"] for n in range(3)]
    todo = [create(client, tasks_url, f"todo {n}")["id"] for n in range(2)]

    assert {t["id"] for t in client.get(f"{tasks_url}?completed=true").get_json()} == set(done)
    assert {t["id"] for t in client.get(f"{tasks_url}?completed=false").get_json()} == set(todo)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("milk", {"Buy MILK", "Shopping"}),
        ("MiLk", {"Buy MILK", "Shopping"}),
        ("%", {"100% done"}),
        ("_", {"a_b"}),
        ("\\", {"back\\slash"}),
        ("a_", {"a_b"}),
        ("0%", {"100% done"}),
        ("nothing like it", set()),
    ],
)
def test_search_is_case_insensitive_and_literal(
    client: FlaskClient, tasks_url: str, q: str, expected: set[str]
) -> None:
    create(client, tasks_url, "Buy MILK")
    create(client, tasks_url, "Shopping", description="eggs, milk")
    for title in ["100% done", "1000 done", "a_b", "axb", "back\\slash", "backslash"]:
        create(client, tasks_url, title)

    found = client.get(tasks_url, query_string={"q": q}).get_json()

    assert {t["title"] for t in found} == expected


def test_filters_combine(client: FlaskClient, tasks_url: str) -> None:
    create(client, tasks_url, "call mum", completed=True)
    create(client, tasks_url, "call dad")
    create(client, tasks_url, "write", completed=True)

    found = client.get(tasks_url, query_string={"q": "call", "completed": "true"}).get_json()

    assert [t["title"] for t in found] == ["call mum"]


# --- sorts --------------------------------------------------------------------------


def test_default_sort_is_newest_first(client: FlaskClient, tasks_url: str) -> None:
    ids = [create(client, tasks_url, f"t{n}")["id"] for n in range(4)]

    assert [t["id"] for t in client.get(tasks_url).get_json()] == ids[::-1]


def test_title_sort_ignores_case(client: FlaskClient, tasks_url: str) -> None:
    for title in ["cherry", "Banana", "apple", "Apple pie"]:
        create(client, tasks_url, title)

    ascending = [t["title"] for t in client.get(f"{tasks_url}?sort=title").get_json()]

    assert ascending == ["apple", "Apple pie", "Banana", "cherry"]
    descending = [t["title"] for t in client.get(f"{tasks_url}?sort=-title").get_json()]
    assert descending == ascending[::-1]


def test_updated_at_sort_follows_changes(client: FlaskClient, tasks_url: str) -> None:
    first, second, third = (create(client, tasks_url, f"t{n}") for n in range(3))
    client.put(f"{tasks_url}/{first['id']}", json={"title": "changed"})

    recent = [t["id"] for t in client.get(f"{tasks_url}?sort=-updated_at").get_json()]

    assert recent == [first["id"], third["id"], second["id"]]
    oldest = [t["id"] for t in client.get(f"{tasks_url}?sort=updated_at").get_json()]
    assert oldest == recent[::-1]


# --- paging -------------------------------------------------------------------------


@pytest.mark.parametrize("sort", SORTS)
def test_paging_through_a_list_with_ties_returns_each_task_once_in_order(
    app: Flask, client: FlaskClient, tasks_url: str, user_id: str, sort: str
) -> None:
    for n in range(23):
        create(client, tasks_url, "same title" if n % 2 else f"Title {n % 5}")
    moment = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    set_times(app, user_id, created_at=moment, updated_at=moment)  # every time ties

    paged = walk(client, f"{tasks_url}?sort={sort}&limit=5")

    whole = client.get(f"{tasks_url}?sort={sort}&limit=500").get_json()
    assert len(whole) == 23
    assert [t["id"] for t in paged] == [t["id"] for t in whole]
    assert [t["id"] for t in paged] == expected_order(whole, sort)


@pytest.mark.parametrize("sort", ALL_SORTS)
def test_tasks_added_and_removed_while_paging_do_not_shift_the_others(
    client: FlaskClient, tasks_url: str, sort: str
) -> None:
    priorities = ["low", "medium", "high", "urgent"]
    initial = [
        create(
            client,
            tasks_url,
            f"Task {n:02}",
            priority=priorities[n % 4],
            due_date=None if n % 3 == 0 else f"2026-12-{1 + n % 7:02}",
        )
        for n in range(30)
    ]
    removed: set[str] = set()

    def meanwhile(page: int) -> None:
        # Each page: add two tasks (one that sorts first, one last) and delete one
        # task not yet returned and one already returned.
        create(client, tasks_url, f"aaa new {page}", priority="urgent", due_date="2026-01-01")
        create(client, tasks_url, f"zzz new {page}", priority="low")
        for victim in (initial[-page], initial[page]):
            if victim["id"] not in removed:
                assert client.delete(f"{tasks_url}/{victim['id']}").status_code == 204
                removed.add(victim["id"])

    paged = [t["id"] for t in walk(client, f"{tasks_url}?sort={sort}&limit=7", meanwhile)]

    assert len(paged) == len(set(paged)), "a task was repeated"
    throughout = {t["id"] for t in initial} - removed
    assert throughout <= set(paged), "a task that existed throughout was skipped"


def test_no_link_on_the_last_page(client: FlaskClient, tasks_url: str) -> None:
    for n in range(5):
        create(client, tasks_url, f"t{n}")

    assert "Link" not in client.get(f"{tasks_url}?limit=5").headers
    assert "Link" not in client.get(f"{tasks_url}?limit=6").headers
    assert "Link" in client.get(f"{tasks_url}?limit=4").headers


def test_next_link_keeps_sort_filters_and_limit(client: FlaskClient, tasks_url: str) -> None:
    for n in range(4):
        create(client, tasks_url, f"find me {n}", completed=True)

    response = client.get(
        tasks_url, query_string={"q": "find", "completed": "true", "limit": 3, "sort": "title"}
    )

    query = parse_qs(urlsplit(LINK.match(response.headers["Link"])["url"]).query)  # type: ignore[index]
    assert {k: v[0] for k, v in query.items() if k != "cursor"} == {
        "q": "find",
        "completed": "true",
        "sort": "title",
        "limit": "3",
    }
    assert client.get(next_url(response)).get_json()[0]["title"] == "find me 3"


def test_default_page_is_100(client: FlaskClient, tasks_url: str) -> None:
    for n in range(101):
        create(client, tasks_url, f"t{n}")

    first = client.get(tasks_url)

    assert len(first.get_json()) == 100
    assert len(client.get(next_url(first)).get_json()) == 1


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1.5", ""])
def test_limit_out_of_bounds_is_422(client: FlaskClient, tasks_url: str, limit: str) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?limit={limit}"), 422)
    assert list(problem["errors"]) == ["limit"]


@pytest.mark.parametrize("limit", ["1", "500"])
def test_limit_bounds_are_accepted(client: FlaskClient, tasks_url: str, limit: str) -> None:
    create(client, tasks_url, "one")
    create(client, tasks_url, "two")

    response = client.get(f"{tasks_url}?limit={limit}")

    assert response.status_code == 200
    assert len(response.get_json()) == min(int(limit), 2)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("sort=rank", "sort"),
        ("sort=-id", "sort"),
        ("completed=yes", "completed"),
        ("completed=1", "completed"),
        ("completed=True", "completed"),
        ("q=", "q"),
        ("q=" + "x" * 501, "q"),
    ],
)
def test_bad_list_parameters_are_422(
    client: FlaskClient, tasks_url: str, query: str, field: str
) -> None:
    problem = assert_problem(client.get(f"{tasks_url}?{query}"), 422)
    assert list(problem["errors"]) == [field]


# --- cursors ------------------------------------------------------------------------


@pytest.fixture
def second_page(client: FlaskClient, tasks_url: str) -> str:
    for n in range(6):
        create(client, tasks_url, f"t{n}", completed=n % 2 == 0)
    url = next_url(client.get(f"{tasks_url}?sort=title&limit=2"))
    assert url is not None
    return url


def _flip(char: str) -> str:
    return "B" if char == "A" else "A"


def cursor_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["cursor"][0]


@pytest.mark.parametrize(
    "tamper",
    [
        # The signature's first character: its last may carry only unused bits.
        lambda c: c[: c.rindex(".") + 1] + _flip(c[c.rindex(".") + 1]) + c[c.rindex(".") + 2 :],
        lambda c: _flip(c[0]) + c[1:],
        lambda c: c.split(".")[0],
        lambda c: c + "x",
        lambda c: "not-a-cursor",
        lambda c: "",
    ],
    ids=["signature", "payload", "unsigned", "appended", "garbage", "empty"],
)
def test_tampered_cursor_is_422(
    client: FlaskClient, tasks_url: str, second_page: str, tamper: Any
) -> None:
    cursor = tamper(cursor_of(second_page))

    problem = assert_problem(
        client.get(tasks_url, query_string={"sort": "title", "limit": 2, "cursor": cursor}), 422
    )

    assert list(problem["errors"]) == ["cursor"]


@pytest.mark.parametrize(
    "other",
    [{"sort": "-title"}, {"sort": "created_at"}, {"completed": "true"}, {"q": "t"}],
)
def test_cursor_reused_with_another_sort_or_filter_is_422(
    client: FlaskClient, tasks_url: str, second_page: str, other: dict[str, str]
) -> None:
    query = {"sort": "title", "limit": 2, "cursor": cursor_of(second_page), **other}

    problem = assert_problem(client.get(tasks_url, query_string=query), 422)

    assert "another sort or filter" in problem["errors"]["cursor"][0]


def test_cursor_of_another_user_is_422(client: FlaskClient, second_page: str) -> None:
    other = f"/api/other-{uuid.uuid4().hex}/tasks"

    response = client.get(
        other, query_string={"sort": "title", "limit": 2, "cursor": cursor_of(second_page)}
    )

    assert_problem(response, 422)


def test_cursor_survives_a_new_page_size(
    client: FlaskClient, tasks_url: str, second_page: str
) -> None:
    response = client.get(
        tasks_url, query_string={"sort": "title", "limit": 10, "cursor": cursor_of(second_page)}
    )

    assert [t["title"] for t in response.get_json()] == ["t2", "t3", "t4", "t5"]


def test_cursor_from_an_instance_with_another_secret_key_is_422(
    client: FlaskClient, tasks_url: str, user_id: str, second_page: str, tmp_path: Path
) -> None:
    stranger = create_app(
        Settings.from_env({"AUTH_JWT_SECRET": SECRET}), instance_path=str(tmp_path)
    )
    stranger.test_client_class = UserClient

    response = stranger.test_client().get(second_page)

    assert_problem(response, 422)


# --- links behind a proxy -----------------------------------------------------------


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "api.example.com",
    "X-Forwarded-For": "203.0.113.9",
}


@pytest.mark.parametrize(
    ("proxies", "base"), [("1", "https://api.example.com"), ("0", "http://localhost")]
)
def test_next_link_uses_forwarded_scheme_and_host_only_when_trusted(
    tmp_path: Path, proxies: str, base: str
) -> None:
    app = create_app(
        Settings.from_env({"AUTH_JWT_SECRET": SECRET, "TRUSTED_PROXIES": proxies}),
        instance_path=str(tmp_path),
    )
    app.test_client_class = UserClient
    client = app.test_client()
    for n in range(3):
        client.post("/api/alice/tasks", json={"title": f"t{n}"})

    response = client.get("/api/alice/tasks?limit=2", headers=FORWARDED)

    assert response.headers["Link"].startswith(f"<{base}/api/alice/tasks?")


# --- query plans --------------------------------------------------------------------

SORT_INDEXES = {
    "created_at": "ix_tasks_user_id_created_at_id",
    "updated_at": "ix_tasks_user_id_updated_at_id",
    "title": "ix_tasks_user_id_lower_title_id",
    "due_date": "ix_tasks_user_id_due_asc",
    "-due_date": "ix_tasks_user_id_due_desc",
    "priority": "ix_tasks_user_id_priority_asc",
    "-priority": "ix_tasks_user_id_priority_desc",
}


def plan(app: Flask, query: Any, params: dict[str, Any]) -> str:
    engine = app.extensions["tasks_api.engine"]
    compiled = query.statement.compile(dialect=engine.dialect)
    with engine.connect() as conn:
        assert len(conn.execute(query.statement, params).all()) == params["limit"]
        if engine.dialect.name == "postgresql":
            rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", params).all()
        else:  # positional; the values do not change SQLite's plan
            values = compiled.construct_params(params)
            bound = tuple(str(values[name]) for name in compiled.positiontup or ())
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", bound).all()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.fixture
def many(app: Flask, backend: str, user_id: str) -> None:
    """20,000 tasks of `user_id`: a third undated, every priority, a rare tag on 20."""
    if backend == "pgbouncer":
        pytest.skip("the same plans as postgresql")
    postgresql = backend == "postgresql"
    if postgresql:
        day, at = "DATE '2026-01-01' + (i % 400)", "now() - i * interval '1 second'"
        empty, rare, ident = "'{}'", "ARRAY['rare']", "gen_random_uuid()"
        position = "lpad(i::text, 10, '0')"
        series = "generate_series(1, 20000) AS i"
    else:
        day = "date('2026-01-01', '+' || (i % 400) || ' days')"
        at = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || i || ' seconds')"
        empty, rare, ident = "'[]'", "'[\"rare\"]'", "lower(hex(randomblob(16)))"
        position = "printf('%010d', i)"
        series = "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s"
        series += " WHERE i < 20000) SELECT i FROM s)"
    with app.extensions["tasks_api.engine"].connect() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, user_id, title, completed, status, priority, due_date,"
                " tags, tag_keys, created_at, updated_at, version, change_position, position)"
                f" SELECT {ident}, :u, 'Task ' || i, false, 'todo',"
                " CASE i % 4 WHEN 0 THEN 'low' WHEN 1 THEN 'medium' WHEN 2 THEN 'high'"
                " ELSE 'urgent' END,"
                f" CASE WHEN i % 3 = 0 THEN NULL ELSE {day} END,"
                f" CASE WHEN i % 1000 = 0 THEN {rare} ELSE {empty} END,"
                f" CASE WHEN i % 1000 = 0 THEN {rare} ELSE {empty} END,"
                f" {at}, {at}, 1, i, {position} FROM {series}"
            ),
            {"u": user_id},
        )
        conn.execute(text("ANALYZE tasks" if postgresql else "ANALYZE"))


@pytest.mark.usefixtures("many")
def test_each_sort_is_an_index_range_scan(
    app: Flask, backend: str, client: FlaskClient, user_id: str
) -> None:
    for sort in ALL_SORTS:
        # The statement the app runs for the next page, past a first page's last row.
        with app.app_context():
            conn = db.connection()
            first = repository.list_tasks(conn, user_id=user_id, sort=sort, limit=20)
        last = first[-1]
        newest_first_ties = sort.lstrip("-") in ("due_date", "priority")
        keys = [last["sort_key"], last["created_at"]] if newest_first_ties else [last["sort_key"]]
        query = repository.list_query(backend, sort, repository.ListVariant(after=True))
        params = {"owner": user_id, "limit": 21, "after_id": last["id"]}
        params.update({f"after_key_{i}": key for i, key in enumerate(keys)})
        index = SORT_INDEXES.get(sort) or SORT_INDEXES[sort.lstrip("-")]
        found = plan(app, query, params)
        if backend == "postgresql":
            backwards = sort.startswith("-") or newest_first_ties
            scan = "Index Scan Backward" if backwards else "Index Scan"
            assert f"{scan} using {index} " in found, (sort, found)
            assert "Sort" not in found, (sort, found)
        else:
            assert f"USING INDEX {index} " in found, (sort, found)
            assert "TEMP B-TREE" not in found, (sort, found)


@pytest.mark.usefixtures("many")
def test_a_rare_tag_is_an_index_lookup_on_postgresql(
    app: Flask, backend: str, user_id: str
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's planner")
    query = repository.list_query(backend, "-created_at", repository.ListVariant(by_tags=True))
    found = plan(app, query, {"owner": user_id, "limit": 20, "tags": ["rare"]})
    assert "ix_tasks_tag_keys" in found, found

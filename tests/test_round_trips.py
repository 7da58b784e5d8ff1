"""Database round trips per request, counted on the wire by a proxy between the app and
PostgreSQL: one per endpoint (two for a create under an Idempotency-Key).

SQLite is in-process, so only PostgreSQL is counted (directly; the PgBouncer backend
runs the same statements).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import URL

from tasks_api import create_app, db
from tasks_api.config import Settings
from tests.support import BACKENDS, REQUIRED, RoundTripCounter, UserClient

# psycopg prepares a statement on a connection after five executions of it (one extra round
# trip, once); counts are taken after that, as a running server would be.
WARM_UP = 8

Counter = Callable[..., float]


@pytest.fixture(scope="module")
def proxy(request: pytest.FixtureRequest) -> Iterator[tuple[RoundTripCounter, URL]]:
    if "postgresql" not in BACKENDS:
        pytest.skip("TEST_DATABASES excludes postgresql")
    url: URL = request.getfixturevalue("postgres_url")
    counter = RoundTripCounter(url)
    yield counter, counter.url(url)
    counter.close()


@pytest.fixture(scope="module")
def counted_app(
    proxy: tuple[RoundTripCounter, URL], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    _, url = proxy
    settings = Settings.from_env(
        {**REQUIRED, "DATABASE_URL": url.render_as_string(hide_password=False)}
    )
    assert settings.migration_url is not None
    db.upgrade(settings.migration_url)
    app = create_app(settings, instance_path=str(tmp_path_factory.mktemp("instance")))
    app.test_client_class = UserClient
    yield app
    app.extensions["tasks_api.engine"].dispose()


@pytest.fixture
def trips(
    counted_app: Flask, proxy: tuple[RoundTripCounter, URL]
) -> Iterator[Callable[..., float]]:
    """trips(method, url_or_factory, **request_args): round trips per request, measured
    over 5 requests after WARM_UP unmeasured ones. A factory gives each request its URL
    and arguments (for deletes and fresh keys)."""
    counter, _ = proxy
    client = counted_app.test_client()

    def measure(
        method: str, target: str | Callable[[], tuple[str, dict[str, Any]]], **kw: Any
    ) -> float:
        def one() -> int:
            url, args = target() if callable(target) else (target, kw)
            before = counter.count()  # after the factory's own requests
            response = client.open(url, method=method, **args)
            assert response.status_code < 400, response.get_json()
            return counter.count() - before

        for _ in range(WARM_UP):
            one()
        connections = counter.connections
        counted = [one() for _ in range(5)]
        assert counter.connections == connections, "a connection was opened while counting"
        return sum(counted) / len(counted)

    yield measure


@pytest.fixture
def made(counted_app: Flask) -> Callable[[str], str]:
    """made(user): the URL of a new task of `user`'s."""
    client = counted_app.test_client()

    def make(user: str) -> str:
        body = {"title": "counted", "due_date": "2026-06-01", "tags": ["work", "Home"]}
        task = client.post(f"/api/{user}/tasks", json=body).get_json()
        return f"/api/{user}/tasks/{task['id']}"

    return make


def test_reads_take_one_round_trip(
    trips: Counter, made: Callable[[str], str], counted_app: Flask
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    task_url = made(user)
    for _ in range(25):
        made(user)
    assert trips("GET", task_url) == 1
    assert trips("GET", f"/api/{user}/tasks?limit=20") == 1
    assert trips("GET", f"/api/{user}/tasks?limit=3&sort=title&q=count&completed=false") == 1
    every_filter = (
        "status=todo,in_progress&priority=medium,high&tag=Work&tag=home&due_after=2026-01-01"
        "&due_before=2026-12-31&q=count&completed=false&limit=3"
    )
    for sort in ("due_date", "-due_date", "priority", "-priority"):
        assert trips("GET", f"/api/{user}/tasks?sort={sort}&{every_filter}") == 1
        assert trips("GET", f"/api/{user}/tasks?sort={sort}&limit=3") == 1
    assert trips("GET", f"/api/{user}/tasks/changes?limit=10") == 1
    since = counted_app.test_client().get(f"/api/{user}/tasks/changes").get_json()["next"]
    assert trips("GET", f"/api/{user}/tasks/changes?since={since}") == 1
    assert trips("GET", "/health/ready") == 1
    assert trips("GET", "/health") == 0


def test_writes_take_one_round_trip(trips: Counter, made: Callable[[str], str]) -> None:
    user = f"user-{uuid.uuid4().hex}"
    task_url = made(user)
    assert trips("POST", f"/api/{user}/tasks", json={"title": "counted"}) == 1
    assert trips("PUT", task_url, json={"title": "renamed"}) == 1
    planned = {"status": "in_progress", "priority": "urgent", "due_date": "2026-12-01"}
    assert trips("PUT", task_url, json={**planned, "tags": ["a", "B", "b"]}) == 1
    assert trips("PUT", task_url, json={"completed": False, "description": None}) == 1
    full = {"title": "t", "description": "d", "priority": "high", "status": "in_progress"}
    assert trips("POST", f"/api/{user}/tasks", json={**full, "tags": ["x"]}) == 1
    assert trips("PATCH", f"{task_url}/complete") == 1
    assert trips("PATCH", f"{task_url}/complete", json={"completed": True}) == 1
    assert trips("DELETE", lambda: (made(user), {})) == 1


def test_conditional_writes_take_one_round_trip(
    trips: Counter, made: Callable[[str], str], counted_app: Flask
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    client = counted_app.test_client()

    def current(url: str) -> dict[str, Any]:
        return {"headers": {"If-Match": client.get(url).headers["ETag"]}}

    def fresh() -> tuple[str, dict[str, Any]]:
        url = made(user)
        return url, current(url)

    assert trips("PUT", lambda: (url := made(user), {**current(url), "json": {"title": "x"}})) == 1
    assert trips("PATCH", lambda: ((url := made(user)) + "/complete", current(url))) == 1
    assert trips("DELETE", fresh) == 1


def test_a_stale_if_match_is_a_412_in_the_same_round_trip(
    counted_app: Flask, proxy: tuple[RoundTripCounter, URL], made: Callable[[str], str]
) -> None:
    counter, _ = proxy
    client = counted_app.test_client()
    task_url = made(f"user-{uuid.uuid4().hex}")
    for _ in range(WARM_UP):
        client.put(task_url, json={"title": "x"}, headers={"If-Match": '"999"'})
    before = counter.count()
    response = client.put(task_url, json={"title": "x"}, headers={"If-Match": '"999"'})
    assert response.status_code == 412
    assert response.headers["ETag"] == '"1"'  # the write's plan read the current version
    assert counter.count() - before == 1


def test_a_create_with_an_idempotency_key_takes_two(trips: Counter) -> None:
    user = f"user-{uuid.uuid4().hex}"
    url = f"/api/{user}/tasks"

    def keyed() -> tuple[str, dict[str, Any]]:
        return url, {"json": {"title": "once"}, "headers": {"Idempotency-Key": uuid.uuid4().hex}}

    assert trips("POST", keyed) == 2
    # A replay: the claim finds the key taken, then one read of the recorded response.
    replayed = {"json": {"title": "once"}, "headers": {"Idempotency-Key": "replayed"}}
    assert trips("POST", url, **replayed) == 2


def test_the_counter_counts(counted_app: Flask, proxy: tuple[RoundTripCounter, URL]) -> None:
    # Two statements on one checked-out connection are two round trips.
    counter, _ = proxy
    with counted_app.extensions["tasks_api.engine"].connect() as conn:
        before = counter.count()
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 2"))
        assert counter.count() - before == 2


def test_lists_subtasks_and_moves_take_one_round_trip(
    trips: Counter, made: Callable[[str], str], counted_app: Flask, postgres_url: URL
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    client = counted_app.test_client()
    lists, tasks = f"/api/{user}/lists", f"/api/{user}/tasks"
    list_url = client.post(lists, json={"title": "L"}).headers["Location"]
    list_id = list_url.rsplit("/", 1)[1]
    parent = client.post(tasks, json={"title": "P", "list_id": list_id}).get_json()["id"]
    task_url = made(user)

    assert trips("POST", lists, json={"title": "more"}) == 1
    assert trips("GET", lists) == 1
    assert trips("GET", list_url) == 1
    assert trips("PUT", list_url, json={"title": "renamed"}) == 1
    assert trips("POST", f"{list_url}/move", json={"after": None}) == 1
    assert trips("POST", tasks, json={"title": "in a list", "list_id": list_id}) == 1
    assert trips("POST", tasks, json={"title": "step", "parent_id": parent}) == 1
    assert trips("POST", f"{task_url}/move", json={"after": None}) == 1
    assert trips("POST", f"{task_url}/move", json={"list_id": list_id}) == 1
    assert trips("GET", f"{tasks}?list={list_id}&sort=position&limit=5") == 1
    assert trips("GET", f"{tasks}?parent={parent}&sort=position") == 1
    # Cascades: completing a parent with its subtasks, moving it with them, deleting it.
    assert trips("PATCH", f"{tasks}/{parent}/complete") == 1
    other = client.post(lists, json={"title": "M"}).get_json()["id"]
    assert trips("PUT", f"{tasks}/{parent}", json={"list_id": other}) == 1

    def family() -> tuple[str, dict[str, Any]]:
        top = client.post(tasks, json={"title": "top"}).get_json()["id"]
        for _ in range(3):
            client.post(tasks, json={"title": "below", "parent_id": top})
        return f"{tasks}/{top}", {}

    assert trips("DELETE", family) == 1

    def full_list() -> tuple[str, dict[str, Any]]:
        url = client.post(lists, json={"title": "full"}).headers["Location"]
        for _ in range(3):
            client.post(tasks, json={"title": "t", "list_id": url.rsplit("/", 1)[1]})
        return url, {}

    assert trips("DELETE", full_list) == 1

    def keyed() -> tuple[str, dict[str, Any]]:
        return lists, {"json": {"title": "once"}, "headers": {"Idempotency-Key": uuid.uuid4().hex}}

    assert trips("POST", keyed) == 2


def test_a_move_that_respaces_its_group_takes_one_round_trip(
    counted_app: Flask, proxy: tuple[RoundTripCounter, URL], postgres_url: URL
) -> None:
    counter, _ = proxy
    user = f"user-{uuid.uuid4().hex}"
    client = counted_app.test_client()
    tasks = f"/api/{user}/tasks"
    ids = [client.post(tasks, json={"title": f"t{n}"}).get_json()["id"] for n in range(30)]
    with psycopg.connect(postgres_url.render_as_string(False), autocommit=True) as conn:
        for n, task_id in enumerate(ids[:2]):  # no key fits between these two
            conn.execute(
                "UPDATE tasks SET position = %s WHERE user_id = %s AND id = %s",
                ["5000000000" + "4" * 53 + str(n + 1), user, task_id],
            )
    for _ in range(WARM_UP):  # the statement, prepared
        client.post(f"{tasks}/{ids[5]}/move", json={"after": ids[3]})
        client.post(f"{tasks}/{ids[5]}/move", json={"after": ids[4]})
    before = counter.count()
    response = client.post(f"{tasks}/{ids[29]}/move", json={"after": ids[0]})
    assert response.status_code == 200
    assert counter.count() - before == 1
    listed = {task["id"]: task for task in client.get(f"{tasks}?limit=100").get_json()}
    # The group was respaced: the crowded keys are short again, and so re-versioned.
    assert all(len(listed[task_id]["position"]) == 10 for task_id in ids)
    assert listed[ids[0]]["version"] > 1 and listed[ids[1]]["version"] > 1


def test_a_bulk_request_takes_one_round_trip_whatever_its_size(
    trips: Counter, counted_app: Flask
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    client = counted_app.test_client()
    tasks = f"/api/{user}/tasks"
    lists = f"/api/{user}/lists"
    list_id = client.post(lists, json={"title": "L"}).get_json()["id"]
    ids = [client.post(tasks, json={"title": f"t{n}"}).get_json()["id"] for n in range(100)]
    for n in range(0, 100, 10):  # some with subtasks, to cascade
        client.post(tasks, json={"title": "below", "parent_id": ids[n]})
    bulk = f"{tasks}/bulk"

    assert trips("POST", bulk, json={"action": "complete", "ids": ids[:1]}) == 1
    assert trips("POST", bulk, json={"action": "complete", "ids": ids}) == 1
    assert trips("POST", bulk, json={"action": "reopen", "ids": ids, "atomic": True}) == 1
    assert trips("POST", bulk, json={"action": "move", "ids": ids, "to": {"list_id": list_id}}) == 1
    assert trips("POST", bulk, json={"action": "update", "ids": ids, "set": {"title": "x"}}) == 1

    def keyed() -> tuple[str, dict[str, Any]]:
        body = {"action": "update", "ids": ids, "set": {"priority": "high"}}
        return bulk, {"json": body, "headers": {"Idempotency-Key": uuid.uuid4().hex}}

    assert trips("POST", keyed) == 2
    assert trips("POST", bulk, json={"action": "delete", "ids": ids}) == 1

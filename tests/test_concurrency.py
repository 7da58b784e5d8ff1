"""Writes stay atomic when requests race: the database, not Python, applies them."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from flask import Flask

TOGGLES = 24
HOLD = "SELECT 1 FROM sync_positions WHERE user_id = %s FOR UPDATE"


def connect(app: Flask) -> psycopg.Connection[Any]:
    """A connection of its own to the app's database, outside the app's pool."""
    url = app.extensions["tasks_api.engine"].url.set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False))


def test_concurrent_toggles_each_apply(app: Flask, task_url: str, task: dict[str, Any]) -> None:
    def toggle(_: int) -> int:
        return app.test_client().patch(f"{task_url}/complete").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(toggle, range(TOGGLES)))

    assert statuses == [200] * TOGGLES
    final = app.test_client().get(task_url).get_json()
    assert final["version"] == 1 + TOGGLES
    assert final["completed"] is (TOGGLES % 2 == 1)


def test_concurrent_updates_of_different_fields_are_all_kept(
    app: Flask, task_url: str, task: dict[str, Any]
) -> None:
    bodies = [{"title": "new title"}, {"description": "new description"}, {"completed": True}]

    def put(body: dict[str, Any]) -> int:
        return app.test_client().put(task_url, json=body).status_code

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(put, bodies)) == [200, 200, 200]

    final = app.test_client().get(task_url).get_json()
    assert (final["title"], final["description"], final["completed"]) == (
        "new title",
        "new description",
        True,
    )
    assert final["version"] == 4


# A write that waits for the user's row behind another write must answer as that write left
# things, not as they were when it arrived. The other write is played here by a transaction
# that holds the row, as every write does, while it changes the task in SQL.
WAITED_FOR = [
    # (what the other write does, the waiting PUT's If-Match, its status, the ETag it reports)
    ("DELETE FROM tasks WHERE id = %s", None, 404, None),
    ("DELETE FROM tasks WHERE id = %s", '"1"', 404, None),
    (CHANGED := "UPDATE tasks SET title = 'theirs', version = 2 WHERE id = %s", None, 200, '"3"'),
    (CHANGED, '"1"', 412, '"2"'),
    (CHANGED, '"2"', 200, '"3"'),
]


@pytest.mark.parametrize(("other", "if_match", "status", "etag"), WAITED_FOR)
def test_a_put_that_waited_for_another_write_sees_what_it_did(
    app: Flask,
    backend: str,
    task_url: str,
    task: dict[str, Any],
    user_id: str,
    other: str,
    if_match: str | None,
    status: int,
    etag: str | None,
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite runs one write at a time from its start: none waits midway")
    headers = {"If-Match": if_match} if if_match else {}
    with connect(app) as other_write:
        other_write.execute(HOLD, [user_id])
        other_write.execute(other, [task["id"]])
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(
                app.test_client().put, task_url, json={"title": "mine"}, headers=headers
            )
            time.sleep(0.5)
            assert not waiting.done()  # it waits for the user's row
            other_write.commit()
            response = waiting.result(timeout=30)

    assert response.status_code == status
    assert response.headers.get("ETag") == etag
    if status == 200:
        assert response.get_json()["title"] == "mine"


def test_a_create_that_waited_for_the_last_free_place_is_refused(
    app: Flask, backend: str, tasks_url: str, user_id: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite runs one write at a time from its start: none waits midway")
    client = app.test_client()
    assert client.post(tasks_url, json={"title": "first"}).status_code == 201
    with connect(app) as other_write:
        other_write.execute(HOLD, [user_id])
        # As a create of the user's 100,000th task would leave the row.
        other_write.execute(
            "UPDATE sync_positions SET tasks = 100000 WHERE user_id = %s", [user_id]
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(app.test_client().post, tasks_url, json={"title": "late"})
            time.sleep(0.5)
            assert not waiting.done()
            other_write.commit()
            response = waiting.result(timeout=30)

    assert response.status_code == 409
    assert "100,000 tasks" in response.get_json()["detail"]
    assert [t["title"] for t in client.get(tasks_url).get_json()] == ["first"]


# As a create of a subtask leaves the database, the user's counter advanced with it.
NEW_SUBTASK = """
WITH counter AS (
    UPDATE sync_positions SET position = position + 1, tasks = tasks + 1
    WHERE user_id = %(user)s RETURNING position
)
INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version, status,
                   priority, tags, tag_keys, change_position, parent_id, position)
SELECT gen_random_uuid(), %(user)s, 'theirs', false, now(), now(), 1, 'todo', 'medium',
       '{}', '{}', position, %(parent)s, lpad((5000000000 + position)::text, 10, '0')
FROM counter
"""


def test_a_completion_that_waited_for_a_new_subtask_completes_it_too(
    app: Flask, backend: str, task_url: str, task: dict[str, Any], user_id: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite runs one write at a time from its start: none waits midway")
    with connect(app) as other_write:
        other_write.execute(HOLD, [user_id])
        other_write.execute(NEW_SUBTASK, {"user": user_id, "parent": task["id"]})
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(app.test_client().patch, f"{task_url}/complete")
            time.sleep(0.5)
            assert not waiting.done()
            other_write.commit()
            response = waiting.result(timeout=30)

    assert response.status_code == 200
    assert response.get_json()["status"] == "done"
    below = app.test_client().get(f"{task_url.rsplit('/', 1)[0]}?parent={task['id']}")
    assert [(t["title"], t["status"]) for t in below.get_json()] == [("theirs", "done")]


def test_bulk_writes_racing_single_writes_lose_no_update(
    app: Flask, backend: str, tasks_url: str
) -> None:
    """Toggles of single tasks and bulk updates of many, on the same tasks at once: each
    acknowledged write is in each task's final version and state."""
    if backend == "sqlite":
        pytest.skip("SQLite runs one write at a time")
    client = app.test_client()
    ids = [client.post(tasks_url, json={"title": f"t{n}"}).get_json()["id"] for n in range(12)]
    toggled = {task_id: 0 for task_id in ids}
    bulked = {task_id: 0 for task_id in ids}
    counts = threading.Lock()
    deadline = time.monotonic() + 4

    def toggler(seed: int) -> None:
        rng, own = random.Random(seed), app.test_client()
        while time.monotonic() < deadline:
            task_id = rng.choice(ids)
            assert own.patch(f"{tasks_url}/{task_id}/complete").status_code == 200
            with counts:
                toggled[task_id] += 1

    def bulker(seed: int) -> None:
        rng, own = random.Random(seed), app.test_client()
        while time.monotonic() < deadline:
            chosen = rng.sample(ids, rng.randint(1, len(ids)))
            body = {"action": "update", "ids": chosen, "set": {"description": f"{rng.random()}"}}
            response = own.post(f"{tasks_url}/bulk", json=body)
            assert response.status_code == 200
            with counts:
                for result in response.get_json()["results"]:
                    assert result["status"] == 200
                    bulked[result["id"]] += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(toggler, n) for n in range(4)]
        futures += [pool.submit(bulker, 100 + n) for n in range(4)]
        for future in futures:
            future.result()

    assert sum(bulked.values()) > 0 and sum(toggled.values()) > 0
    for task_id in ids:
        final = client.get(f"{tasks_url}/{task_id}").get_json()
        assert final["version"] == 1 + toggled[task_id] + bulked[task_id]
        assert final["completed"] is (toggled[task_id] % 2 == 1)

"""The sync feed under concurrent writers: two gunicorn instances on one PostgreSQL, writer
threads changing one user's tasks through both, and a reader syncing in a loop until it
has seen thousands of changes. After the writers stop and one more sync, the reader holds
exactly the user's tasks, id for id and version for version.

Beside it, on the same writes, a naive feed ("the tasks whose (updated_at, id) is past the
last one seen", read straight from the table): it misses changes, because a write's
updated_at is taken before the write waits its turn, so writes commit out of the order
of their timestamps. The number it missed is printed (`pytest -s`) and must be above
zero, or the race did not race.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from tests.support import token_for

WRITERS = 6
ENOUGH = 4000  # entries the reader must have applied before the writers stop
DEADLINE = 120.0  # seconds; the race gives up (and fails) past it


class Api:
    """One keep-alive connection to one instance, as one user."""

    def __init__(self, port: int, user: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {
            "Authorization": f"Bearer {token_for(user, lifetime=600)}",
            "Content-Type": "application/json",
        }
        self.base = f"/api/{user}/tasks"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body)
        self.connection.request(method, self.base + path, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def close(self) -> None:
        self.connection.close()


def write(api: Api, known: list[str], rng: random.Random) -> None:
    """One write of a random kind; the task ids it creates join `known`."""
    roll = rng.random()
    if roll < 0.15 or len(known) < 20:
        status, task = api.call("POST", "", {"title": f"new {rng.random()}"})
        assert status == 201
        known.append(task["id"])
        return
    task_id = rng.choice(known)
    if roll < 0.30:
        status, _ = api.call("DELETE", f"/{task_id}")
        assert status in (204, 404)
    elif roll < 0.60:
        status, _ = api.call("PUT", f"/{task_id}", {"title": f"renamed {rng.random()}"})
        assert status in (200, 404)
    elif roll < 0.85:
        status, _ = api.call("PATCH", f"/{task_id}/complete")
        assert status in (200, 404)
    else:
        status, _ = api.call("PATCH", f"/{task_id}/complete", {"completed": rng.random() < 0.5})
        assert status in (200, 404)


class Reader:
    """The sync loop of a front end, applying every answer."""

    def __init__(self, apis: list[Api]) -> None:
        self.apis = apis
        self.tasks: dict[str, int] = {}
        self.token: str | None = None
        self.applied = 0
        self.calls = 0

    def call(self) -> bool:
        query = "?limit=25" + (f"&since={self.token}" if self.token else "")
        status, answer = self.apis[self.calls % len(self.apis)].call("GET", "/changes" + query)
        assert status == 200, answer
        self.calls += 1
        for task in answer["changes"]:
            self.tasks[task["id"]] = task["version"]
        for task_id in answer["deleted"]:
            self.tasks.pop(task_id, None)
        self.applied += len(answer["changes"]) + len(answer["deleted"])
        self.token = answer["next"]
        return bool(answer["more"])


class NaiveReader:
    """Tasks past the last (updated_at, id) seen: what a sync by timestamps does."""

    def __init__(self, url: URL, user: str) -> None:
        self.connection = psycopg.connect(url.render_as_string(False), autocommit=True)
        self.user = user
        self.tasks: dict[str, int] = {}
        self.last: tuple[datetime, uuid.UUID] | None = None

    def call(self) -> bool:
        after = self.last or (datetime.fromisoformat("1970-01-01T00:00:00+00:00"), uuid.UUID(int=0))
        rows = self.connection.execute(
            "SELECT id, version, updated_at FROM tasks WHERE user_id = %s"
            " AND (updated_at, id) > (%s, %s) ORDER BY updated_at, id LIMIT 25",
            [self.user, *after],
        ).fetchall()
        for task_id, version, updated_at in rows:
            self.tasks[str(task_id)] = version
            self.last = (updated_at, task_id)
        return len(rows) == 25


def listed(api: Api) -> dict[str, int]:
    """The user's tasks as a fresh list reads them, every page."""
    tasks: dict[str, int] = {}
    path = "?limit=500"
    while True:
        api.connection.request("GET", api.base + path, headers=api.headers)
        response = api.connection.getresponse()
        page = json.loads(response.read())
        tasks.update({task["id"]: task["version"] for task in page})
        link = response.getheader("Link")
        if link is None:
            return tasks
        path = "?" + link.split("?", 1)[1].split(">", 1)[0]


def test_concurrent_writers_through_two_instances_miss_nothing(
    two_instances: list[int], instances_database: URL
) -> None:
    user = f"racer-{uuid.uuid4().hex[:8]}"
    seeder = Api(two_instances[0], user)
    known: list[str] = []
    for n in range(50):
        write(seeder, known, random.Random(n))
    seeder.close()
    stop = threading.Event()
    failures: list[BaseException] = []
    writes = [0] * WRITERS

    def writer(n: int) -> None:
        api, rng = Api(two_instances[n % 2], user), random.Random(1000 + n)
        try:
            while not stop.is_set():
                write(api, known, rng)
                writes[n] += 1
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            api.close()

    reader = Reader([Api(port, user) for port in two_instances])
    naive = NaiveReader(instances_database, user)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        while reader.applied < ENOUGH and not failures:
            assert time.monotonic() - started < DEADLINE, f"only {reader.applied} applied"
            reader.call()
            naive.call()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[0]

    while reader.call():
        pass
    while naive.call():
        pass
    naive.connection.close()
    for api in reader.apis:
        api.close()
    checker = Api(two_instances[1], user)  # a fresh connection: idle ones get closed
    truth = listed(checker)
    checker.close()
    # Deletes are invisible to the naive feed; count only what it got wrong of the rest.
    naive_missed = sum(
        1 for task_id, version in truth.items() if naive.tasks.get(task_id) != version
    )
    print(
        f"\nsync race: {sum(writes)} writes by {WRITERS} threads through 2 instances in "
        f"{time.monotonic() - started:.1f} s; the reader applied {reader.applied} entries in "
        f"{reader.calls} calls; {len(truth)} tasks at the end. The naive updated_at feed "
        f"ended with {naive_missed} of them wrong or missing."
    )
    assert reader.tasks == truth
    assert naive_missed > 0

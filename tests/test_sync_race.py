"""The sync feed under concurrent writers: two gunicorn instances on one PostgreSQL, writer
threads changing one user's tasks and lists through both (creating, renaming, moving and
deleting lists, which deletes their tasks; moving tasks between lists), and a reader
syncing in a loop until it has seen thousands of changes. Whenever an answer says
`more: false`, every task the reader holds is in a list it holds (or the inbox). After the
writers stop and one more sync, the reader holds exactly the user's tasks and lists, id
for id and version for version.

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
KINDS = ("changes", "deleted", "lists", "deleted_lists")  # what a feed answer holds
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
        self.root = f"/api/{user}"
        self.base = f"{self.root}/tasks"

    def call(self, method: str, path: str, body: Any = None, *, under: str = "") -> tuple[int, Any]:
        """`path` below the tasks (`under` "/lists": below the lists)."""
        payload = None if body is None else json.dumps(body)
        target = (self.root + under if under else self.base) + path
        self.connection.request(method, target, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def close(self) -> None:
        self.connection.close()


def write(api: Api, known: list[str], lists: list[str], rng: random.Random) -> str:
    """One write of a random kind, the kind returned; the task ids it creates join
    `known`, the list ids `lists` (which a deleted list leaves)."""
    roll = rng.random()
    if roll < 0.15 or len(known) < 20:
        home = rng.choice(lists) if lists and rng.random() < 0.5 else None
        body = {"title": f"new {rng.random()}"} | ({"list_id": home} if home else {})
        status, task = api.call("POST", "", body)
        if status == 422 and home:  # the list was deleted meanwhile
            assert list(task["errors"]) == ["list_id"], task
            return "task"
        assert status == 201, task
        known.append(task["id"])
        return "task"
    if roll >= 0.80:
        return write_list(api, lists, rng)
    task_id = rng.choice(known)
    if roll < 0.27:
        status, _ = api.call("DELETE", f"/{task_id}")
        assert status in (204, 404)
    elif roll < 0.47:
        status, _ = api.call("PUT", f"/{task_id}", {"title": f"renamed {rng.random()}"})
        assert status in (200, 404)
    elif roll < 0.60:
        status, _ = api.call("PATCH", f"/{task_id}/complete")
        assert status in (200, 404)
    elif roll < 0.67:
        status, _ = api.call("PATCH", f"/{task_id}/complete", {"completed": rng.random() < 0.5})
        assert status in (200, 404)
    else:  # to another list (or the inbox), last or first there
        place = {"after": None} if rng.random() < 0.5 else {}
        home = rng.choice(lists) if lists and rng.random() < 0.5 else None
        status, answer = api.call("POST", f"/{task_id}/move", {"list_id": home, **place})
        assert status in (200, 404, 422), answer
        if status == 422:  # the list was deleted meanwhile
            assert list(answer["errors"]) == ["list_id"], answer
    return "task"


def write_list(api: Api, lists: list[str], rng: random.Random) -> str:
    """One write to a list: create, rename, move or delete (with its tasks)."""
    roll = rng.random()
    if len(lists) < 3 or (roll < 0.25 and len(lists) < 12):
        status, created = api.call("POST", "", {"title": f"list {rng.random()}"}, under="/lists")
        assert status == 201, created
        lists.append(created["id"])
        return "list"
    list_id = rng.choice(lists)
    if roll < 0.55:
        status, answer = api.call(
            "PUT", f"/{list_id}", {"title": f"renamed {rng.random()}"}, under="/lists"
        )
        assert status in (200, 404), answer
    elif roll < 0.98:
        other = rng.choice(lists)
        place = rng.choice([{"after": other}, {"before": other}, {"after": None}, {}])
        status, answer = api.call("POST", f"/{list_id}/move", place, under="/lists")
        assert status in (200, 404, 422), answer
        if status == 422:  # the other list was deleted meanwhile, or is this one
            assert list(answer["errors"]) in (["after"], ["before"]), answer
    else:  # few: each takes a list's tasks with it, and the naive feed needs many tasks
        status, answer = api.call("DELETE", f"/{list_id}", under="/lists")
        assert status in (204, 404), answer
        if status == 204:
            lists.remove(list_id)  # only one delete of it answers 204
    return "list"


class Reader:
    """The sync loop of a front end, applying every answer."""

    def __init__(self, apis: list[Api]) -> None:
        self.apis = apis
        self.tasks: dict[str, int] = {}
        self.homes: dict[str, str | None] = {}  # each task's list
        self.lists: dict[str, int] = {}
        self.token: str | None = None
        self.applied = 0
        self.calls = 0
        self.caught_up = 0  # answers with `more: false`

    def call(self) -> bool:
        query = "?limit=25" + (f"&since={self.token}" if self.token else "")
        status, answer = self.apis[self.calls % len(self.apis)].call("GET", "/changes" + query)
        assert status == 200, answer
        self.calls += 1
        for task in answer["changes"]:
            self.tasks[task["id"]] = task["version"]
            self.homes[task["id"]] = task["list_id"]
        for task_id in answer["deleted"]:
            self.tasks.pop(task_id, None)
            self.homes.pop(task_id, None)
        for task_list in answer["lists"]:
            self.lists[task_list["id"]] = task_list["version"]
        for list_id in answer["deleted_lists"]:
            self.lists.pop(list_id, None)
        self.applied += sum(len(answer[name]) for name in KINDS)
        self.token = answer["next"]
        if answer["more"]:
            return True
        # API.md: once an answer says `more: false`, every task held is in a list held.
        homeless = {home for home in self.homes.values() if home and home not in self.lists}
        assert not homeless, f"tasks held in lists not held: {homeless}"
        self.caught_up += 1
        return False


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


def listed(api: Api, base: str) -> dict[str, int]:
    """The user's tasks (or lists, at their `base`) as a fresh read gets them, every
    page: id -> version."""
    items: dict[str, int] = {}
    path = "?limit=500"
    while True:
        api.connection.request("GET", base + path, headers=api.headers)
        response = api.connection.getresponse()
        page = json.loads(response.read())
        items.update({item["id"]: item["version"] for item in page})
        link = response.getheader("Link")
        if link is None:
            return items
        path = "?" + link.split("?", 1)[1].split(">", 1)[0]


def test_concurrent_writers_through_two_instances_miss_nothing(
    two_instances: list[int], instances_database: URL
) -> None:
    user = f"racer-{uuid.uuid4().hex[:8]}"
    seeder = Api(two_instances[0], user)
    known: list[str] = []
    lists: list[str] = []
    for n in range(50):
        write(seeder, known, lists, random.Random(n))
    seeder.close()
    stop = threading.Event()
    failures: list[BaseException] = []
    writes = [0] * WRITERS
    list_writes = [0] * WRITERS

    def writer(n: int) -> None:
        api, rng = Api(two_instances[n % 2], user), random.Random(1000 + n)
        try:
            while not stop.is_set():
                if write(api, known, lists, rng) == "list":
                    list_writes[n] += 1
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
    truth = listed(checker, checker.base)
    truth_lists = listed(checker, checker.root + "/lists")
    checker.close()
    # Deletes are invisible to the naive feed; count only what it got wrong of the rest.
    naive_missed = sum(
        1 for task_id, version in truth.items() if naive.tasks.get(task_id) != version
    )
    print(
        f"\nsync race: {sum(writes)} writes ({sum(list_writes)} to lists) by {WRITERS} threads "
        f"through 2 instances in {time.monotonic() - started:.1f} s; the reader applied "
        f"{reader.applied} entries in {reader.calls} calls ({reader.caught_up} caught up); "
        f"{len(truth)} tasks and {len(truth_lists)} lists at the end. The naive updated_at "
        f"feed ended with {naive_missed} of the tasks wrong or missing."
    )
    assert reader.tasks == truth
    assert reader.lists == truth_lists
    assert naive_missed > 0

"""Benchmark: lists, subtasks and the manual order, measured against baselines in the same run.

    python bench/organize.py [--seconds 5] [--rounds 3] [--requests 300] [--base REV]

1. A move within a list of 10,000 tasks against one within a list of 20:
   `POST /api/{user}/tasks/{id}/move`, a random task after a random sibling (one in ten
   `{"after": null}`, first, and one in ten `{}`, last).
2. `GET /api/{user}/lists` for a user whose 10 lists hold 100,000 tasks against one whose
   10 lists hold 20.
3. The first page of a list in its manual order, `GET /api/{user}/tasks?list={id}
   &sort=position&limit=20`, in a list of 100,000 tasks against one of 20.
1b, 3b. The same in the inbox (`list=inbox`), of 100,000 tasks against one of 20: the
   inbox is where every task made before lists existed is, and has an index of its own.

   Each of 1-3: --requests sequential requests per side, on one keep-alive connection
   per scenario, the two sides alternating and the three scenarios interleaved, after a
   warm-up past psycopg's prepare (again whenever the connection is reopened); median and
   p99 latency and the ratio of the medians, big / small (goal: at most 1.2 each).
4. Create and update throughput with the new columns against the version before
   (`--base`, default 848035d, extracted with `git archive`), each on a database of its
   own migrated by its own code, alternating over --rounds rounds, with wrk (2 threads,
   16 connections; bench/tasks.lua) over 500 users with 20 tasks each, each server
   warmed by a second of load first: req/s (median of the rounds) and the ratio
   new / old (goal: at least 0.9). Toggles too, for the record (no goal): a toggle
   takes the general write protocol, a lock statement and then the write's.

Also printed: of the moves, how many changed a task, and what they left (distinct keys,
the longest, tasks respaced); and whether every user's task count and change counter
still agree with their tasks after all the writes.

Both apps run under gunicorn as the Procfile runs them (2 workers). The databases are
seeded in SQL, as the app would have left them (positions, list counts, each user's
change counter and task count), then VACUUM ANALYZEd. PostgreSQL at BENCH_POSTGRES_URL
(default: the local one, as postgres), 127.0.0.1 only; the databases are dropped
afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from endpoints import token, wrk  # noqa: E402
from sync import MIGRATE, Server, extract  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASES = {"new": "tasks_api_bench_organize", "old": "tasks_api_bench_organize_base"}
BASE = "848035d"  # the commit before lists, subtasks and the manual order
WRITES = ["create", "update", "toggle"]
GOALS = {"create", "update"}  # a toggle, for the record: it takes the general write protocol
# The organizing users: (user id, lists, tasks in each list). Every task is top-level.
MOVE = (("move-10k", 1, 10_000), ("move-20", 1, 20))
LISTS = (("lists-100k", 10, 10_000), ("lists-20", 10, 2))
PAGE = (("page-100k", 1, 100_000), ("page-20", 1, 20))
INBOX = (("inbox-100k", 0, 100_000), ("inbox-20", 0, 20))  # tasks in no list
WRITERS, PER_WRITER = 500, 20  # users, and tasks each (in the inbox), for the wrk runs
FIRST = 5_000_000_000  # tasks_api/positions.py: the key of a group's first member
PAGE_SIZE = 20
WARM_UP = 12  # requests of each kind before timing: past psycopg's prepare on the 6th
KEEPALIVE = 900  # reopen before tasks_api.server closes a connection (after 1,000 requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="of the wrk runs")
    parser.add_argument("--requests", type=int, default=300, help="per side of 1-3")
    parser.add_argument("--base", default=BASE, help="the revision before the feature")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk, or run bench/endpoints.py once)")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_organize_"))
    trees = {"new": ROOT, "old": extract(options.base, work / "base")}
    urls = {kind: make_url(ADMIN_URL).set(database=name) for kind, name in DATABASES.items()}
    plain = {kind: url.render_as_string(False) for kind, url in urls.items()}
    try:
        for kind, url in urls.items():
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {url.database}")
            psycopg_url = url.set(drivername="postgresql+psycopg").render_as_string(False)
            subprocess.run(
                [sys.executable, "-c", MIGRATE, psycopg_url], cwd=trees[kind], check=True
            )
        started = time.monotonic()
        targets = {kind: seed(plain[kind], kind, work) for kind in urls}
        print(f"seeded in {time.monotonic() - started:.1f} s", file=sys.stderr)
        latencies, moves = sequential(plain["new"], options.requests)
        writes: dict[str, dict[str, list[dict[str, float]]]] = {
            kind: {mode: [] for mode in WRITES} for kind in urls
        }
        for n in range(options.rounds):
            for kind in ("old", "new") if n % 2 == 0 else ("new", "old"):
                server = Server(trees[kind], plain[kind])
                try:
                    wrk(server.port, "get", targets[kind], 1, 64)  # warm-up, as endpoints.py
                    for mode in WRITES:
                        writes[kind][mode].append(
                            wrk(server.port, mode, targets[kind], options.seconds)
                        )
                finally:
                    server.stop()
        report(latencies, moves, writes, checks(plain["new"]), options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for url in urls.values():
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")


# --- data ------------------------------------------------------------------------------

# Lists, then their tasks, as created one after another: positions are consecutive
# integers from FIRST (what the app gives a group it appends to), every third task done,
# change positions numbered per user (lists first) and distinct.
SEED_LISTS = """
INSERT INTO lists (id, user_id, title, position, open_tasks, created_at, updated_at, version,
                   change_position)
SELECT gen_random_uuid(), s.user_id, 'List ' || n, lpad((%(first)s + n)::text, 10, '0'), 0,
       now(), now(), 1, n + 1
FROM unnest(%(users)s::text[], %(lists)s::int[], %(per_list)s::int[])
     AS s(user_id, lists, per_list),
     generate_series(0, s.lists - 1) AS n
"""
SEED_LIST_TASKS = """
INSERT INTO tasks (id, user_id, title, completed, status, completed_at, created_at, updated_at,
                   version, list_id, position, change_position)
SELECT gen_random_uuid(), l.user_id, 'Task ' || i, i %% 3 = 2,
       CASE WHEN i %% 3 = 2 THEN 'done' ELSE 'todo' END, CASE WHEN i %% 3 = 2 THEN now() END,
       now() - (s.per_list - i) * interval '1 second',
       now() - (s.per_list - i) * interval '1 second', 1,
       l.id, lpad((%(first)s + i)::text, 10, '0'),
       s.lists + (l.position::bigint - %(first)s) * s.per_list + i + 1
FROM unnest(%(users)s::text[], %(lists)s::int[], %(per_list)s::int[])
     AS s(user_id, lists, per_list)
JOIN lists l ON l.user_id = s.user_id
CROSS JOIN LATERAL generate_series(0, s.per_list - 1) AS i
"""
# The writers: PER_WRITER tasks each in the inbox, oldest first. Without the new columns
# for the old version.
SEED_WRITERS = """
INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version,
                   change_position{position})
SELECT gen_random_uuid(), 'user-' || (i %% %(users)s), 'Task ' || i, false,
       now() - (%(total)s - i) * interval '1 second', now() - (%(total)s - i) * interval '1 second',
       1, i / %(users)s + 1{key}
FROM generate_series(0, %(total)s - 1) AS i
"""
SEED_INBOX = """
INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version, position,
                   change_position)
SELECT gen_random_uuid(), s.user_id, 'Task ' || i, false, now(), now(), 1,
       lpad((%(first)s + i)::text, 10, '0'), i + 1
FROM unnest(%(users)s::text[], %(per_list)s::int[]) AS s(user_id, per_list),
     generate_series(0, s.per_list - 1) AS i
"""
OPEN_TASKS = """
UPDATE lists SET open_tasks = counted.n
FROM (SELECT user_id, list_id, count(*) FILTER (WHERE status <> 'done') AS n
      FROM tasks WHERE list_id IS NOT NULL GROUP BY user_id, list_id) AS counted
WHERE lists.user_id = counted.user_id AND lists.id = counted.list_id
"""
# Each user's row: the counter at their highest change position, their task and list
# counts (migration 0007's columns).
COUNTERS = """
INSERT INTO sync_positions (user_id, position, tasks, lists)
SELECT user_id, max(position), sum(tasks), sum(lists)
FROM (SELECT user_id, max(change_position) AS position, count(*) AS tasks, 0 AS lists
      FROM tasks GROUP BY user_id
      UNION ALL
      SELECT user_id, max(change_position), 0, count(*) FROM lists GROUP BY user_id) AS c
GROUP BY user_id
"""
OLD_COUNTERS = """
INSERT INTO sync_positions (user_id, position)
SELECT user_id, max(change_position) FROM tasks GROUP BY user_id
"""


def seed(url: str, kind: str, work: Path) -> Path:
    """The writers (both databases), and the organizing users (the new one); returns the
    wrk targets file of the writers' tasks."""
    new = kind == "new"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")  # migration 0004's 5 s is for requests
        writers = SEED_WRITERS.format(
            position=", position" if new else "",
            key=f", lpad(({FIRST} + i / %(users)s)::text, 10, '0')" if new else "",
        )
        conn.execute(writers, {"users": WRITERS, "total": WRITERS * PER_WRITER})
        if new:
            users = [*MOVE, *LISTS, *PAGE]
            params = {
                "first": FIRST,
                "users": [user for user, _, _ in users],
                "lists": [lists for _, lists, _ in users],
                "per_list": [per_list for _, _, per_list in users],
            }
            conn.execute(SEED_LISTS, params)
            conn.execute(SEED_LIST_TASKS, params)
            conn.execute(OPEN_TASKS)
            inbox = {
                "first": FIRST,
                "users": [u for u, _, _ in INBOX],
                "per_list": [n for _, _, n in INBOX],
            }
            conn.execute(SEED_INBOX, inbox)
        conn.execute(COUNTERS if new else OLD_COUNTERS)
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute(
            "SELECT user_id, id FROM tasks WHERE user_id LIKE %s ORDER BY user_id, id", ["user-%"]
        ).fetchall()
    tokens: dict[str, str] = {}
    targets = work / f"{kind}-writers.txt"
    targets.write_text(
        "".join(f"{user} {task} {tokens.setdefault(user, token(user))}\n" for user, task in rows)
    )
    return targets


def group(url: str, user: str) -> tuple[str, list[str]]:
    """The user's (first) list, or `inbox` when they have none, and its tasks' ids, in
    their order."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT id::text FROM lists WHERE user_id = %s LIMIT 1", [user])
        found = row.fetchone()
        list_id = found[0] if found else "inbox"
        ids = conn.execute(
            "SELECT id::text FROM tasks WHERE user_id = %s AND list_id IS NOT DISTINCT FROM"
            " %s::uuid AND parent_id IS NULL ORDER BY position",
            [user, found[0] if found else None],
        ).fetchall()
    return list_id, [task for (task,) in ids]


# --- sequential requests ------------------------------------------------------------------


class Client:
    """One keep-alive connection. Before the server closes it (tasks_api.server: after
    1,000 requests) it is reopened, and `warm` runs on the new one (it may be served by
    the other worker, whose statements are not prepared yet)."""

    def __init__(self, port: int, warm: Callable[[Client], None]) -> None:
        self.port, self.warm = port, warm
        self.connection: http.client.HTTPConnection | None = None
        self.served = 0  # requests on the current connection

    def ready(self) -> None:
        """Open (and warm) a connection if there is none or it is near its end."""
        if self.connection is None or self.served >= KEEPALIVE:
            if self.connection is not None:
                self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.served = 0
            self.warm(self)

    def call(self, method: str, path: str, user: str, body: Any = None) -> tuple[float, Any]:
        """Send one request; its latency in ms and the JSON answer. Asserts a 200."""
        assert self.connection is not None
        headers = {"Authorization": f"Bearer {token(user)}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        raw = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status == 200, (method, path, body, response.status, raw[:500])
        self.served += 1
        if response.will_close:  # closed early after all: warm the next one
            self.served = KEEPALIVE
        return elapsed, json.loads(raw)


class Mover:
    """Moves in one user's list: a random task after a random sibling, or first, or last.
    Keeps each task's version, to count the moves that changed something."""

    def __init__(self, user: str, ids: list[str], rng: random.Random) -> None:
        self.user, self.ids, self.rng = user, ids, rng
        self.versions = dict.fromkeys(ids, 1)
        self.changed = 0

    def body(self, kind: str | None = None) -> dict[str, str | None]:
        kind = kind or self.rng.choices(["after", "first", "last"], [8, 1, 1])[0]
        if kind == "first":
            return {"after": None}
        if kind == "last":
            return {}
        return {"after": self.rng.choice(self.ids)}  # the task itself is redrawn in `move`

    def move(self, client: Client, kind: str | None = None) -> float:
        task = self.rng.choice(self.ids)
        body = self.body(kind)
        while body.get("after") == task:
            body = {"after": self.rng.choice(self.ids)}
        elapsed, answer = client.call(
            "POST", f"/api/{self.user}/tasks/{task}/move", self.user, body
        )
        if answer["version"] != self.versions[task]:
            self.changed += 1
            self.versions[task] = answer["version"]
        return elapsed


def sequential(url: str, n: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Scenarios 1-3: each side's latencies (ms), by scenario key; and, of the moves, how
    many changed a task, per user."""
    rng = random.Random(19)
    movers = {user: Mover(user, group(url, user)[1], rng) for user, _, _ in (*MOVE, *INBOX)}
    pages = {
        user: f"/api/{user}/tasks?list={group(url, user)[0]}&sort=position&limit={PAGE_SIZE}"
        for user, _, _ in (*PAGE, *INBOX)
    }

    def lists(client: Client, user: str) -> float:
        elapsed, answer = client.call("GET", f"/api/{user}/lists", user)
        assert len(answer) == 10, answer
        return elapsed

    def page(client: Client, user: str) -> float:
        elapsed, answer = client.call("GET", pages[user], user)
        assert len(answer) == PAGE_SIZE, answer
        return elapsed

    def warm_moves(client: Client) -> None:
        for _ in range(WARM_UP):
            for mover in movers.values():
                for kind in ("after", "first", "last"):
                    mover.move(client, kind)

    def warm_reads(request: Callable[[Client, str], float], users: Any) -> Any:
        def warm(client: Client) -> None:
            for _ in range(WARM_UP):
                for user, _, _ in users:
                    request(client, user)

        return warm

    # Each scenario: its client, and each side's request (big first).
    scenarios: dict[str, tuple[Client, dict[str, Callable[[], float]]]] = {}
    server = Server(ROOT, url)
    try:
        for name, users in (("move", MOVE), ("inbox move", INBOX)):
            client = Client(server.port, warm_moves)
            scenarios[name] = (
                client,
                {
                    user: (lambda m=movers[user], c=client: m.move(c))  # type: ignore[misc]
                    for user, _, _ in users
                },
            )
        for name, users, request in (
            ("lists", LISTS, lists),
            ("page", PAGE, page),
            ("inbox page", INBOX, page),
        ):
            client = Client(server.port, warm_reads(request, users))
            scenarios[name] = (
                client,
                {user: (lambda c=client, u=user, r=request: r(c, u)) for user, _, _ in users},
            )
        times: dict[str, list[float]] = {}
        for name, (_, runs) in scenarios.items():
            times |= {f"{name}:{user}": [] for user in runs}
        for i in range(n):
            for name, (client, runs) in scenarios.items():
                client.ready()
                order = list(runs.items())
                if i % 2:  # neither side always first
                    order.reverse()
                for user, run in order:
                    times[f"{name}:{user}"].append(run())
        for client, _ in scenarios.values():
            if client.connection is not None:
                client.connection.close()
    finally:
        server.stop()
    return times, {user: mover.changed for user, mover in movers.items()}


def checks(url: str) -> dict[str, Any]:
    """What the runs left in the new database: the moved groups' keys, and whether every
    user's task count is still exact."""
    found: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        for user, _, _ in (*MOVE, *INBOX):
            found[user] = conn.execute(
                "SELECT count(*), count(DISTINCT position), max(length(position)),"
                " sum(version - 1) FROM tasks WHERE user_id = %s AND parent_id IS NULL",
                [user],
            ).fetchone()
        found["counts off"] = conn.execute(
            "SELECT count(*) FROM sync_positions p LEFT JOIN"
            " (SELECT user_id, count(*) AS n FROM tasks GROUP BY user_id) AS c USING (user_id)"
            " WHERE p.tasks <> coalesce(c.n, 0)"
        ).fetchone()[0]  # type: ignore[index]
        found["counters behind"] = conn.execute(
            "SELECT count(*) FROM sync_positions p JOIN"
            " (SELECT user_id, max(change_position) AS top FROM tasks GROUP BY user_id) AS c"
            " USING (user_id) WHERE p.position < c.top"
        ).fetchone()[0]  # type: ignore[index]
    return found


# --- report ------------------------------------------------------------------------------


def report(
    latencies: dict[str, list[float]],
    moves: dict[str, int],
    writes: dict[str, dict[str, list[dict[str, float]]]],
    found: dict[str, Any],
    options: argparse.Namespace,
) -> None:
    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98]

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    print(
        f"\n{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()},"
        f" {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"\nSequential requests, one keep-alive connection per scenario, {options.requests}"
        " per side, sides alternating, scenarios interleaved (ms):"
    )
    print(
        f"{'scenario':<40}{'big p50':>9}{'p99':>8}{'small p50':>11}{'p99':>8}"
        f"{'ratio':>8}{'goal':>9}"
    )
    labels = {
        "move": "move, 10,000-task vs 20-task list",
        "inbox move": "move, 100,000-task vs 20-task inbox",
        "lists": "GET lists, 100,000 vs 20 tasks",
        "page": "first page by position, 100k vs 20",
        "inbox page": "inbox's first page, 100k vs 20",
    }
    pairs = (
        ("move", MOVE),
        ("inbox move", INBOX),
        ("lists", LISTS),
        ("page", PAGE),
        ("inbox page", INBOX),
    )
    for name, pair in pairs:
        big, small = (latencies[f"{name}:{user}"] for user, _, _ in pair)
        ratio = statistics.median(big) / statistics.median(small)
        print(
            f"{labels[name]:<40}{statistics.median(big):>9.2f}{p99(big):>8.2f}"
            f"{statistics.median(small):>11.2f}{p99(small):>8.2f}{ratio:>8.3f}"
            f"{'<= 1.2':>9}  {verdict(ratio <= 1.2)}"
        )
    for user, _, size in (*MOVE, *INBOX):
        rows, distinct, longest, bumps = found[user]
        # Version bumps beyond the moved tasks' own: rows a respacing rewrote.
        print(
            f"  moves among {size:,} tasks ({user}): {moves[user]} changed a task (warm-up"
            f" included); afterwards {distinct:,} distinct keys of {rows:,}, the longest"
            f" {longest} characters, {bumps - moves[user]:,} tasks respaced"
        )

    print(
        f"\nWrites, wrk -t2 -c16 -d{options.seconds}s over {WRITERS} users with {PER_WRITER}"
        f" tasks each, median req/s of {options.rounds} rounds; old = {options.base}:"
    )
    print(f"{'write':<10}{'old':>10}{'new':>10}{'ratio':>8}{'errors':>8}{'goal':>9}")
    for mode in WRITES:
        old, new = (
            statistics.median(r["rps"] for r in writes[kind][mode]) for kind in ("old", "new")
        )
        errors = sum(r["errors"] + r["transport"] for k in writes for r in writes[k][mode])
        goal = f"{'>= 0.9':>9}  {verdict(new / old >= 0.9)}" if mode in GOALS else ""
        print(f"{mode:<10}{old:>10.0f}{new:>10.0f}{new / old:>8.3f}{errors:>8.0f}{goal}")
    print(
        f"\nafterwards: users whose task count is off: {found['counts off']};"
        f" whose change counter is behind a task: {found['counters behind']}"
    )


if __name__ == "__main__":
    main()

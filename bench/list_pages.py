"""Benchmark: list pages stay fast at any list size and any depth.

    python bench/list_pages.py [--requests 200] [--rounds 3] [--keep]

Seeds a scratch PostgreSQL database with 1,000,000 tasks (one user with 100,000, one
with 20, the rest in lists of 20) with generate_series, starts the app under gunicorn
(2 workers), and times GET /api/{user}/tasks?limit=20 for every sort (the manual order
`position` in the inbox, `list=inbox`, where every task is) and for the `tag` filter
(alone and with a due-date sort): the first page of the 20-task user, the first
page of the 100k-task user, and the 100k-task user's page 100 pages deep (row 2,001).
Tasks spread over every status and priority, six in seven have a due date, and one in
ten carries the tags Work and home (every one of the 20-task user's does, so its
filtered page is a full page too). Requests are sequential on one keep-alive connection, one
request of each scenario in turn; the table gives median and p99 latency and the
two ratios the issue sets goals for (first page 100k / 20 tasks, deep / first page).

Runs against the PostgreSQL at BENCH_POSTGRES_URL (default: the local one, as postgres),
on 127.0.0.1 only, and drops its database afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_api import db  # noqa: E402
from tasks_api.schemas.tasks import SORTS  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "tasks_api_bench"
PORT = 8700
# Each scenario's query string: every sort, then the tag filter. The manual order is a
# group's: every task here is in its user's inbox.
QUERIES = [f"sort={sort}" + ("&list=inbox" if sort == "position" else "") for sort in SORTS]
QUERIES += ["tag=work", "tag=work&sort=due_date"]
HEAVY, LIGHT = "heavy-user", "light-user"
PAGE = 20
DEPTH = 100

SEED = """
INSERT INTO tasks (id, user_id, title, description, completed, status, priority, due_date,
                   tags, tag_keys, completed_at, created_at, updated_at, version,
                   change_position, position)
SELECT gen_random_uuid(), {user}, 'Task ' || md5(i::text),
       CASE WHEN i % 4 = 0 THEN 'Notes for task ' || i END,
       i % 3 = 0, (ARRAY['done', 'todo', 'in_progress'])[1 + i % 3],
       (ARRAY['low', 'medium', 'high', 'urgent'])[1 + i % 4],
       CASE WHEN i % 7 <> 0 THEN DATE '2026-01-01' + i % 367 END,
       CASE WHEN {tagged} THEN ARRAY['Work', 'home'] ELSE '{{}}' END,
       CASE WHEN {tagged} THEN ARRAY['work', 'home'] ELSE '{{}}' END,
       CASE WHEN i % 3 = 0 THEN ts + interval '1 hour' END,
       ts, ts + (i % 997) * interval '1 second', 1, i, lpad((5000000000 + i)::text, 10, '0')
FROM (SELECT i, timestamptz '2025-01-01 00:00:00+00' + i * interval '7 seconds' AS ts
      FROM generate_series(1, {count}) AS i) AS s
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    options = parser.parse_args()

    url = make_url(ADMIN_URL).set(database=DATABASE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    try:
        db.upgrade(url.set(drivername="postgresql+psycopg"))
        seed(url.render_as_string(hide_password=False))
        secret = secrets.token_urlsafe(32)
        with serve(url.render_as_string(hide_password=False), secret):
            results = measure(secret, options.requests, options.rounds)
        report(results, options)
    finally:
        if not options.keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def seed(url: str) -> None:
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")  # migration 0004's 5 s is for requests
        # Independent of the due date and of being undated (7, 10 and 367 share no
        # factor that would line them up), so the tagged tasks spread through every sort.
        tenth = "i % 10 = 3"
        conn.execute(SEED.format(user=f"'{HEAVY}'", count=100_000, tagged=tenth))
        conn.execute(SEED.format(user=f"'{LIGHT}'", count=20, tagged="true"))
        # 44,999 more users with 20 tasks each: 899,980 rows.
        conn.execute(SEED.format(user="'user-' || (i % 44999)", count=899_980, tagged=tenth))
        conn.execute("VACUUM ANALYZE tasks")
        total = conn.execute("SELECT count(*) FROM tasks").fetchone()
    print(f"seeded {total[0]:,} tasks in {time.monotonic() - started:.1f} s", file=sys.stderr)


class serve:
    """gunicorn as the Procfile runs it (2 workers), on 127.0.0.1."""

    def __init__(self, url: str, secret: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "AUTH_JWT_SECRET": secret,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "WEB_CONCURRENCY": "2",
            "LOG_LEVEL": "WARNING",
        }

    def __enter__(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{PORT}",
                "--access-logfile",
                "/dev/null",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not start")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def measure(secret: str, requests: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    now = int(time.time())
    tokens = {
        user: jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret)
        for user in (HEAVY, LIGHT)
    }
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)

    def get(path: str, user: str) -> tuple[float, str | None]:
        started = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {tokens[user]}"})
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200, (response.status, path)
        link = response.getheader("Link")
        return elapsed, link

    scenarios: dict[tuple[str, str], tuple[str, str]] = {}
    for query in QUERIES:
        first = f"/api/{{user}}/tasks?{query}&limit={PAGE}"
        scenarios[(query, "20 tasks, first page")] = (first.format(user=LIGHT), LIGHT)
        scenarios[(query, "100k tasks, first page")] = (first.format(user=HEAVY), HEAVY)
        path = first.format(user=HEAVY)
        for _ in range(DEPTH - 1):  # follow the next links down to page 100
            _, link = get(path, HEAVY)
            assert link is not None
            target = urlsplit(link[1 : link.index(">")])
            path = f"{target.path}?{target.query}"
        scenarios[(query, f"100k tasks, page {DEPTH}")] = (path, HEAVY)

    samples: dict[tuple[str, str], list[float]] = {key: [] for key in scenarios}
    for path, user in scenarios.values():  # warm every statement and page
        for _ in range(10):
            get(path, user)
    # One request of each scenario in turn, so the machine's noise falls on all alike.
    for _ in range(rounds * requests):
        for key, (path, user) in scenarios.items():
            samples[key].append(get(path, user)[0])
    return samples


def report(samples: dict[tuple[str, str], list[float]], options: argparse.Namespace) -> None:
    def p50(values: list[float]) -> float:
        return statistics.median(values) * 1000

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98] * 1000

    print(
        f"\nGET /api/{{user}}/tasks?...&limit={PAGE}, gunicorn 2 workers, local "
        f"PostgreSQL, 1,000,000 tasks; {options.rounds * options.requests} requests per "
        f"scenario, interleaved; {platform.node()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| query | 20 tasks, first page p50 / p99 (ms) | 100k tasks, first page | "
        f"100k tasks, page {DEPTH} | first page 100k / 20 | page {DEPTH} / first page |"
    )
    print("|---|---|---|---|---|---|")
    worst = [0.0, 0.0]
    for query in QUERIES:
        light = samples[(query, "20 tasks, first page")]
        heavy = samples[(query, "100k tasks, first page")]
        deep = samples[(query, f"100k tasks, page {DEPTH}")]
        size_ratio, depth_ratio = p50(heavy) / p50(light), p50(deep) / p50(heavy)
        worst = [max(worst[0], size_ratio), max(worst[1], depth_ratio)]
        print(
            f"| `{query}` | {p50(light):.2f} / {p99(light):.2f} | {p50(heavy):.2f} / "
            f"{p99(heavy):.2f} | {p50(deep):.2f} / {p99(deep):.2f} | {size_ratio:.2f}x | "
            f"{depth_ratio:.2f}x |"
        )
    print(
        f"\nworst ratios (medians): first page 100k/20 {worst[0]:.2f}x (goal <= 1.2x), "
        f"page {DEPTH}/first {worst[1]:.2f}x (goal <= 1.2x)"
    )


if __name__ == "__main__":
    main()

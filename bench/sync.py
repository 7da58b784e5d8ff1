"""Benchmark: the sync feed's two costs, measured against baselines in the same run.

    python bench/sync.py [--seconds 5] [--rounds 3] [--requests 300] [--base REV] [--writes W,..]

1. An empty incremental sync (`GET .../tasks/changes?since=<current token>`) for a user
   with 100,000 tasks and for one with 20, sequential on one keep-alive connection,
   alternating: median and p99 latency, and the ratio 100k / 20 (goal: at most 1.2).
2. Write throughput with change tracking against without: this tree's app against the
   same app as it was before change tracking (`--base`, default the parent of the
   commit that added migration 0006, extracted with `git archive`), each on a database
   of its own migrated by its own code, alternating over --rounds rounds, with wrk
   (2 threads, 16 connections; bench/tasks.lua) for create, update, toggle and delete
   over 500 users with 20 tasks each. Prints req/s (median of the rounds) and the ratio
   with / without (goal: at least 0.9).

Both apps run under gunicorn as the Procfile runs them (2 workers). PostgreSQL at
BENCH_POSTGRES_URL (default: the local one, as postgres), 127.0.0.1 only; the databases
are dropped afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from endpoints import SECRET, free_port, token, wrk  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASES = {"with": "tasks_api_bench_sync", "without": "tasks_api_bench_sync_base"}
WRITES = ["create", "update", "toggle", "delete"]
HEAVY, LIGHT = ("heavy-user", 100_000), ("light-user", 20)
PER_DELETE_RUN = 30_000
SECRET_KEY = secrets.token_urlsafe(32)
MIGRATE = "import sys; from sqlalchemy.engine import make_url; from tasks_api import db; "
MIGRATE += "db.upgrade(make_url(sys.argv[1]))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="empty syncs per user")
    parser.add_argument("--base", help="the revision without change tracking")
    parser.add_argument(
        "--writes", default=",".join(WRITES), help="comma-separated: which writes to time"
    )
    options = parser.parse_args()
    base = options.base or before_tracking()
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_sync_"))
    trees = {"with": ROOT, "without": extract(base, work / "base")}
    urls = {kind: make_url(ADMIN_URL).set(database=name) for kind, name in DATABASES.items()}
    try:
        for kind, url in urls.items():
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {url.database}")
            psycopg_url = url.set(drivername="postgresql+psycopg").render_as_string(False)
            subprocess.run(
                [sys.executable, "-c", MIGRATE, psycopg_url], cwd=trees[kind], check=True
            )
        plain = {kind: url.render_as_string(False) for kind, url in urls.items()}
        targets = {kind: seed(plain[kind], kind, work, options.rounds) for kind in urls}
        latencies = empty_syncs(plain["with"], options.requests)
        modes = [mode for mode in WRITES if mode in options.writes.split(",")]
        writes: dict[str, dict[str, list[dict[str, float]]]] = {
            k: {m: [] for m in modes} for k in urls
        }
        for n in range(options.rounds):
            for kind in ("without", "with"):
                server = Server(trees[kind], plain[kind])
                try:
                    for mode in modes:
                        file = targets[kind][f"doomed-{n}" if mode == "delete" else "hot"]
                        writes[kind][mode].append(wrk(server.port, mode, file, options.seconds))
                finally:
                    server.stop()
        report(latencies, writes, base, options)
    finally:
        for url in urls.values():
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")


def before_tracking() -> str:
    """The parent of the commit that added migration 0006."""
    added = subprocess.run(
        [
            "git",
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "tasks_api/migrations/versions/0006*",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{added[-1]}^"


def extract(revision: str, folder: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", revision, "tasks_api", "wsgi.py", "gunicorn.conf.py"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


# --- data ------------------------------------------------------------------------------


def seed(url: str, kind: str, work: Path, rounds: int) -> dict[str, Path]:
    """500 users with 20 tasks each to change, and tasks to delete (a slice per round);
    with tracking, the two sync users too. Positions as the app would have left them."""
    tracked = kind == "with"
    # With tracking (this tree, migration 0007 on): each task's manual-order key in its
    # user's inbox too (tasks_api/positions.py: ten digits, oldest first).
    position = ", change_position, position" if tracked else ""
    key = ", i / 500 + 1, lpad((5000000000 - i / 500)::text, 10, '0')" if tracked else ""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")  # migration 0004's 5 s is for requests
        total = 10_000 + PER_DELETE_RUN * rounds
        conn.execute(
            "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version"
            f"{position}) SELECT gen_random_uuid(),"
            " CASE WHEN i <= 10000 THEN 'user-' ELSE 'doomed-' END || (i %% 500), 'Task ' || i,"
            " false, now() - i * interval '1 second', now() - i * interval '1 second', 1"
            f"{key} FROM generate_series(0, %s - 1) AS i",
            [total],
        )
        if tracked:
            for user, count in (HEAVY, LIGHT):
                conn.execute(
                    "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at,"
                    " version, change_position, position) SELECT gen_random_uuid(), %s,"
                    " 'Task ' || i, false, now(), now(), 1, i,"
                    " lpad((5000000000 + i)::text, 10, '0') FROM generate_series(1, %s) AS i",
                    [user, count],
                )
            # Each user's change counter, and task count (a delete takes one off it).
            conn.execute(
                "INSERT INTO sync_positions (user_id, position, tasks)"
                " SELECT user_id, max(change_position), count(*) FROM tasks GROUP BY user_id"
            )
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute(
            "SELECT user_id, id FROM tasks WHERE user_id LIKE 'user-%%' OR user_id LIKE 'doomed-%%'"
            " ORDER BY user_id, id"
        ).fetchall()
    tokens: dict[str, str] = {}
    hot, doomed = [], []
    for user, task in rows:
        line = f"{user} {task} {tokens.setdefault(user, token(user))}\n"
        (hot if user.startswith("user-") else doomed).append(line)
    per_run = len(doomed) // rounds
    files = {"hot": work / f"{kind}-hot.txt"}
    files["hot"].write_text("".join(hot))
    for n in range(rounds):
        files[f"doomed-{n}"] = work / f"{kind}-doomed-{n}.txt"
        files[f"doomed-{n}"].write_text("".join(doomed[n * per_run : (n + 1) * per_run]))
    return files


# --- servers and requests ----------------------------------------------------------------


class Server:
    def __init__(self, tree: Path, database_url: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
            "DATABASE_URL": database_url,
            "AUTH_JWT_SECRET": SECRET,
            "SECRET_KEY": SECRET_KEY,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(500):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.01)
            finally:
                connection.close()
        raise RuntimeError("the app did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def get(connection: http.client.HTTPConnection, path: str, user: str) -> dict[str, object]:
    connection.request("GET", path, headers={"Authorization": f"Bearer {token(user)}"})
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, body
    answer: dict[str, object] = json.loads(body)
    return answer


def empty_syncs(url: str, n: int) -> dict[str, list[float]]:
    """Each sync user's empty incremental syncs, timed, alternating the two users."""
    server = Server(ROOT, url)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        tokens = {}
        for user, _ in (HEAVY, LIGHT):
            answer = {"more": True, "next": None}
            while answer["more"]:  # the first sync, to the current token
                since = f"&since={answer['next']}" if answer["next"] else ""
                answer = get(connection, f"/api/{user}/tasks/changes?limit=1000{since}", user)
            tokens[user] = answer["next"]
        times: dict[str, list[float]] = {HEAVY[0]: [], LIGHT[0]: []}
        for i in range(2 * n + 20):
            user = (HEAVY, LIGHT)[i % 2][0]
            started = time.perf_counter()
            answer = get(connection, f"/api/{user}/tasks/changes?since={tokens[user]}", user)
            elapsed = time.perf_counter() - started
            assert answer["changes"] == [] and answer["deleted"] == []
            if i >= 20:  # after a warm-up past psycopg's prepare threshold
                times[user].append(elapsed * 1000)
        connection.close()
        return times
    finally:
        server.stop()


# --- report ------------------------------------------------------------------------------


def report(
    latencies: dict[str, list[float]],
    writes: dict[str, dict[str, list[dict[str, float]]]],
    base: str,
    options: argparse.Namespace,
) -> None:
    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98]

    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"\nEmpty incremental sync, {options.requests} sequential requests per user:")
    print(f"{'user':<24}{'p50 ms':>10}{'p99 ms':>10}")
    for (_, count), values in zip((HEAVY, LIGHT), latencies.values(), strict=True):
        print(f"{f'{count:,} tasks':<24}{statistics.median(values):>10.3f}{p99(values):>10.3f}")
    heavy, light = (statistics.median(v) for v in latencies.values())
    print(f"ratio p50 100k / 20: {heavy / light:.3f} (goal <= 1.2)")

    print(
        f"\nWrites, wrk -t2 -c16 -d{options.seconds}s, median req/s of {options.rounds} rounds;"
        f" without = {base}:"
    )
    print(f"{'write':<10}{'without':>10}{'with':>10}{'ratio':>8}{'errors':>8}")
    ratios = []
    for mode in writes["with"]:
        without, with_ = (
            statistics.median(r["rps"] for r in writes[kind][mode]) for kind in ("without", "with")
        )
        errors = sum(r["errors"] + r["transport"] for k in writes for r in writes[k][mode])
        ratios.append(with_ / without)
        print(f"{mode:<10}{without:>10.0f}{with_:>10.0f}{with_ / without:>8.3f}{errors:>8.0f}")
    print(f"lowest ratio with / without: {min(ratios):.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()

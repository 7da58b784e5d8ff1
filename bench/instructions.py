"""Benchmark: instructions per request, this tree against an earlier version of tasks_api,
counted by valgrind's callgrind: the same count on a busy machine as on an idle one,
where worker CPU seconds (bench/efficiency.py) move by a quarter from run to run.

    python bench/instructions.py [--before REV] [--requests 1000]   # ~5 min; needs valgrind

Each version serves GET one, list (20, a user's whole list) and create in-process:
Flask's test client, the app as it runs (its engine and pool, the token checked), its
own scratch PostgreSQL database migrated by its own migrations. Each runs under
`valgrind --tool=callgrind` twice, with no measured requests and with --requests of
them, after the same set-up and warm-up; the difference over --requests is a request's
instructions. What it counts: the app (Flask, flask-smorest, webargs, marshmallow,
SQLAlchemy, psycopg, tasks_api) and the test client, not gunicorn or the worker
(tasks_api/server.py), which bench/efficiency.py measures with the rest. PostgreSQL's
own work is not counted either: it is another process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from efficiency import BEFORE, checkout  # noqa: E402
from endpoints import ADMIN_URL  # noqa: E402

MODES = ("get", "list", "create")
# Run with the version's tree as the working directory, so `tasks_api` is that version.
CHILD = """
import os, sys
import jwt
from tasks_api import create_app

mode, count = sys.argv[1], int(sys.argv[2])
user = f"{mode}-{count}"  # runs share a database, not a user: a list sees its 20 tasks
client = create_app().test_client()
token = jwt.encode({"sub": user, "exp": 4102444800}, os.environ["AUTH_JWT_SECRET"])
headers = {"Authorization": "Bearer " + token}
base = f"/api/{user}/tasks"
ids = [client.post(base, json={"title": f"Task {i}"}, headers=headers).json["id"]
       for i in range(20)]
requests = {
    "get": lambda: client.get(f"{base}/{ids[3]}", headers=headers),
    "list": lambda: client.get(f"{base}?limit=20", headers=headers),  # no next page
    "create": lambda: client.post(base, json={"title": "Benchmark task"}, headers=headers),
}
request = requests[mode]
for _ in range(50 + count):
    answer = request()
    assert answer.status_code in (200, 201), answer.status_code
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="the version to compare against")
    parser.add_argument("--requests", type=int, default=1000, help="measured, per mode")
    options = parser.parse_args()
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_instructions_"))
    trees = {"before": checkout(options.before, work / "before"), "now": ROOT}
    try:
        urls = {kind: scratch(kind, tree) for kind, tree in trees.items()}
        runs = [
            (kind, mode, count)
            for mode in MODES
            for kind in trees
            for count in (0, options.requests)
        ]
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            counted = pool.map(
                lambda run: count_instructions(valgrind, trees[run[0]], urls[run[0]], *run[1:]),
                runs,
            )
            totals = dict(zip(runs, counted, strict=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for kind in trees:
                conn.execute(f"DROP DATABASE IF EXISTS {database(kind)} WITH (FORCE)")
    report(totals, options)


def database(kind: str) -> str:
    return f"tasks_api_bench_instructions_{kind}"


def scratch(kind: str, tree: Path) -> str:
    """A new database for one version, migrated by that version; its URL."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database(kind)} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {database(kind)}")
    target = (
        make_url(ADMIN_URL)
        .set(drivername="postgresql+psycopg", database=database(kind))
        .render_as_string(hide_password=False)
    )
    migrate = "import sys; from sqlalchemy import make_url; from tasks_api import db; "
    migrate += "db.upgrade(make_url(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", migrate, target], cwd=tree, check=True)
    return target


def count_instructions(valgrind: str, tree: Path, url: str, mode: str, count: int) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "AUTH_JWT_SECRET": "instructions-benchmark-secret-0123456789",
        "SECRET_KEY": "instructions-benchmark-key-0123456789",
        "LOG_LEVEL": "WARNING",
        "PYTHONHASHSEED": "0",  # the same set and dict layouts in every run
    }
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        + [sys.executable, "-c", CHILD, mode, str(count)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found[1])


def report(totals: dict[tuple[str, str, int], int], options: argparse.Namespace) -> None:
    n = options.requests
    revision = subprocess.run(
        ["git", "rev-parse", "--short", options.before], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"\ninstructions per request, in-process, {n} requests; before = {revision}\n")
    print("| request | before | now | change |")
    print("|---|---|---|---|")
    for mode in MODES:
        before, now = ((totals[k, mode, n] - totals[k, mode, 0]) / n for k in ("before", "now"))
        print(f"| {mode} | {before / 1e6:.3f} M | {now / 1e6:.3f} M | {now / before - 1:+.0%} |")


if __name__ == "__main__":
    main()

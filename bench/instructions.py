"""Benchmark: instructions per request, counted by valgrind's callgrind: the same count on
a busy machine as on an idle one, where worker CPU seconds (bench/efficiency.py) move by
a quarter from run to run.

    python bench/instructions.py [--before REV] [--requests 1000]   # ~8-11 min; needs valgrind

The worker as served: each of the floor (bench/floor.py under gunicorn's stock threaded
worker), the floor's requests in plain Flask (bench/flask_floor.py, the same worker: what
Flask alone adds), tasks_api at REV (from `git archive`, with its own gunicorn.conf.py) and this
tree runs under `valgrind --tool=callgrind` with one worker, against its own scratch
PostgreSQL database, and serves GET one, list (20, the user's whole list) or create on
one kept-alive connection. Each runs twice, with no measured requests and with
--requests of them, after the same start, set-up and warm-up; the worker's difference
over --requests is a request's instructions, gunicorn's parsing and writing included.
PostgreSQL's work is not counted: it is another process.

    python bench/instructions.py --in-process [--before REV] [--requests 1000]   # ~9 min

The app alone, REV against this tree: Flask's test client calls it in one process (its
engine and pool, the token checked), no gunicorn, no worker; the test client's own work
is counted too, the same in both.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from efficiency import BEFORE, checkout  # noqa: E402
from endpoints import ADMIN_URL, free_port  # noqa: E402

MODES = ("get", "list", "create")
# Served under gunicorn's stock threaded worker, with an empty config.
FLOORS = {"floor": "bench.floor:app", "flask": "bench.flask_floor:app"}
SECRET = "instructions-benchmark-secret-0123456789"
# Run with the version's tree as the working directory, so `tasks_api` is that version.
IN_PROCESS = """
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
    parser.add_argument("--in-process", action="store_true", help="the app alone, no worker")
    options = parser.parse_args()
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_instructions_"))
    trees = {"before": checkout(options.before, work / "before"), "now": ROOT}
    if not options.in_process:
        trees = {"floor": ROOT, "flask": ROOT, **trees}
    count = count_in_process if options.in_process else count_served
    try:
        urls = {kind: scratch(kind, tree) for kind, tree in trees.items()}
        runs = [(kind, mode, n) for mode in MODES for kind in trees for n in (0, options.requests)]
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            counted = pool.map(
                lambda run: count(valgrind, run[0], trees[run[0]], urls[run[0]], *run[1:]),
                runs,
            )
            totals = dict(zip(runs, counted, strict=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for kind in trees:
                conn.execute(f"DROP DATABASE IF EXISTS {database(kind)} WITH (FORCE)")
    report(totals, tuple(trees), options)


def database(kind: str) -> str:
    return f"tasks_api_bench_instructions_{kind}"


def scratch(kind: str, tree: Path) -> str:
    """A new database for one version, migrated by that version (the floor: this
    tree's schema); its URL."""
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


def environment(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "AUTH_JWT_SECRET": SECRET,
        "SECRET_KEY": "instructions-benchmark-key-0123456789",
        "PYTHONHASHSEED": "0",  # the same set and dict layouts in every run
    }


def count_in_process(valgrind: str, kind: str, tree: Path, url: str, mode: str, n: int) -> int:
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        + [sys.executable, "-c", IN_PROCESS, mode, str(n)],
        cwd=tree,
        env={**environment(url), "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found[1])


def count_served(valgrind: str, kind: str, tree: Path, url: str, mode: str, n: int) -> int:
    """The worker's instructions from its fork (as callgrind counts a forked process:
    from the master's start) to its exit, having served `n` requests after the set-up."""
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        env = environment(url) | {"PORT": str(port), "WEB_CONCURRENCY": "1"}
        if kind in FLOORS:
            env["FLOOR_DATABASE_URL"] = (
                make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            )
            server = ["--config", os.devnull, "--workers", "1", "--bind", f"127.0.0.1:{port}"]
            server += ["--worker-class", "gthread", "--threads", "4", FLOORS[kind]]
        else:
            server = ["--config", "gunicorn.conf.py", "wsgi:app"]
        # The command line outdoes the config file: a worker 50x slower is not a hung one.
        server[:0] = ["--timeout", "900", "--graceful-timeout", "900"]
        process = subprocess.Popen(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p"]
            + [sys.executable, "-m", "gunicorn", *server],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            serve(port, kind, mode, n)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=900)
        totals = {}
        for path in glob.glob(f"{out}/callgrind.*"):
            found = re.search(r"^(?:summary|totals): (\d+)", Path(path).read_text(), re.M)
            if found is not None:
                totals[int(path.rsplit(".", 1)[1])] = int(found[1])
    workers = [total for pid, total in totals.items() if pid != process.pid]
    if len(workers) != 1:
        raise RuntimeError(f"{kind} {mode}: expected one worker's count, got {totals}")
    return workers[0]


def serve(port: int, kind: str, mode: str, n: int) -> None:
    """Wait for the server, then 20 tasks, 50 requests of warm-up and `n` more, on one
    kept-alive connection."""
    ready = "/api/x/tasks" if kind in FLOORS else "/health"
    deadline = time.monotonic() + 600
    while True:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            probe.request("GET", ready)
            if probe.getresponse().status == 200:
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            probe.close()
    user = f"{mode}-{n}"
    token = jwt.encode({"sub": user, "exp": 4102444800}, SECRET)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(method: str, path: str, body: str | None = None) -> bytes:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        if answer.status not in (200, 201):
            raise RuntimeError(f"{kind} {method} {path}: {answer.status} {data[:200]!r}")
        return data

    base = f"/api/{user}/tasks"
    ids = [
        json.loads(call("POST", base, json.dumps({"title": f"Task {i}"})))["id"] for i in range(20)
    ]
    request: Callable[[], bytes] = {
        "get": lambda: call("GET", f"{base}/{ids[3]}"),
        "list": lambda: call("GET", f"{base}?limit=20"),  # the whole list: no next page
        "create": lambda: call("POST", base, '{"title": "Benchmark task"}'),
    }[mode]
    for _ in range(50 + n):
        request()
    connection.close()


def report(
    totals: dict[tuple[str, str, int], int], kinds: tuple[str, ...], options: argparse.Namespace
) -> None:
    n = options.requests
    revision = subprocess.run(
        ["git", "rev-parse", "--short", options.before], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    what = "the app in-process" if options.in_process else "the worker, served"
    print(f"\ninstructions per request, {what}, {n} requests; before = {revision}\n")
    served = "floor" in kinds
    columns = ["request", *kinds, "now / before"]
    columns += ["flask / floor", "now / floor"] if served else []
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for mode in MODES:
        per = {k: (totals[k, mode, n] - totals[k, mode, 0]) / n for k in kinds}
        cells = [f"{per[k] / 1e6:.3f} M" for k in kinds]
        cells.append(f"{per['now'] / per['before'] - 1:+.0%}")
        if served:
            cells += [f"{per['flask'] / per['floor']:.2f}x", f"{per['now'] / per['floor']:.2f}x"]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    if served:
        # Where CPU bounds throughput, 0.75x the floor's means at most 1/0.75 its CPU.
        print("\n0.75x the floor's throughput allows at most 1.33x its instructions.")


if __name__ == "__main__":
    main()

"""Benchmark: one bulk request against as many single requests, 2 ms from the database.

    python bench/bulk.py [--rounds 5] [--delay-ms 2] [--size 100]

tasks_api under gunicorn as the Procfile runs it, reaching PostgreSQL through
bench/delay_proxy.c (bench/endpoints.py --network's proxy, adding --delay-ms per round
trip, as a PaaS reaching Neon in its region). One keep-alive connection, as one browser
tab. In each round, alternating which goes first, on two sets of --size tasks of one user
(a tenth of them with a subtask each): --size single `PATCH .../complete` requests in a
row (`{"completed": true}`, then `false` the next round), and one
`POST .../tasks/bulk` doing the same to the other set. After a warm-up past psycopg's
prepare. Prints, as medians of the rounds:

- the wall time of the singles against the bulk request's (goal: at least 20x faster);
- the bulk request's latency against a single PATCH's median (goal: at most 3x).

PostgreSQL at BENCH_POSTGRES_URL (default: the local one, as postgres), 127.0.0.1 only;
the database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from endpoints import DelayProxy, Server, token  # noqa: E402

from tasks_api import db  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "tasks_api_bench_bulk"
USER = "bulk-user"
WARM_UP = 12  # of each kind, an even number: past psycopg's prepare on the 6th


class Client:
    """One keep-alive connection, as one browser tab."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token(USER)}"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[float, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        self.connection.request(method, f"/api/{USER}/tasks{path}", body=data, headers=headers)
        response = self.connection.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - started
        assert response.status in (200, 201), (method, path, response.status, raw[:300])
        return elapsed, json.loads(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=100)
    options = parser.parse_args()
    url = make_url(ADMIN_URL).set(database=DATABASE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_bulk_"))
    proxy = server = None
    try:
        db.upgrade(url.set(drivername="postgresql+psycopg").render_as_string(False))
        proxy = DelayProxy(work, url.port or 5432, options.delay_ms)
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        server = Server("app", through)
        client = Client(server.port)
        sets = [seed(client, options.size) for _ in range(2)]
        # What autovacuum does within a minute of a table's growth; a table never analyzed
        # gets estimates for an empty one (every other bench/ script seeds, then analyzes).
        with psycopg.connect(url.render_as_string(False), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        warm(client, sets)
        singles: list[float] = []
        per_single: list[float] = []
        bulks: list[float] = []
        for n in range(options.rounds):
            completed = n % 2 == 0
            single_set, bulk_set = sets if n % 2 == 0 else sets[::-1]
            order = ("single", "bulk") if n % 2 == 0 else ("bulk", "single")
            for kind in order:
                if kind == "single":
                    times = [
                        client.call("PATCH", f"/{i}/complete", {"completed": completed})[0]
                        for i in single_set
                    ]
                    singles.append(sum(times))
                    per_single.append(statistics.median(times))
                else:
                    action = "complete" if completed else "reopen"
                    elapsed, answer = client.call(
                        "POST", "/bulk", {"action": action, "ids": bulk_set}
                    )
                    assert {r["status"] for r in answer["results"]} == {200}
                    bulks.append(elapsed)
        report(options, singles, per_single, bulks)
    finally:
        if server is not None:
            server.stop()
        if proxy is not None:
            proxy.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def seed(client: Client, size: int) -> list[str]:
    """`size` tasks, a tenth of them with a subtask (completing them cascades)."""
    ids = [client.call("POST", "", {"title": f"task {n}"})[1]["id"] for n in range(size)]
    for task_id in ids[::10]:
        client.call("POST", "", {"title": "a step", "parent_id": task_id})
    return ids


def warm(client: Client, sets: list[list[str]]) -> None:
    for n in range(WARM_UP):
        completed = n % 2 == 0
        client.call("PATCH", f"/{sets[0][0]}/complete", {"completed": completed})
        action = "complete" if completed else "reopen"
        client.call("POST", "/bulk", {"action": action, "ids": sets[1]})
    # An even number: both sets are todo again, as the first round expects.


def report(
    options: argparse.Namespace, singles: list[float], per_single: list[float], bulks: list[float]
) -> None:
    single, one, bulk = (statistics.median(v) * 1000 for v in (singles, per_single, bulks))
    print(
        f"\n{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()},"
        f" {time.strftime('%Y-%m-%d')}; {options.delay_ms:g} ms per database round trip;"
        f" medians of {options.rounds} rounds\n"
    )
    print(f"{options.size} single PATCH requests, one after another: {single:8.1f} ms")
    print(f"one bulk request of {options.size} ids:                 {bulk:8.1f} ms")
    print(f"a single PATCH (median):                       {one:8.1f} ms\n")
    speedup, latency = single / bulk, bulk / one
    print(f"bulk against the singles, wall time: {speedup:5.1f}x faster (goal >= 20x)", end="")
    print("  met" if speedup >= 20 else "  MISSED")
    print(f"bulk latency against one PATCH:      {latency:5.2f}x (goal <= 3x)", end="")
    print("  met" if latency <= 3 else "  MISSED")


if __name__ == "__main__":
    main()

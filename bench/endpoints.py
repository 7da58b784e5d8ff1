"""Benchmark: every endpoint against a bare WSGI + psycopg-pool app doing the same SQL.

    python bench/endpoints.py [--seconds 5] [--rounds 3]

Installs wrk from Debian if missing, seeds a scratch PostgreSQL database, starts tasks_api
(gunicorn, 2 workers, as the Procfile does) and bench/baseline.py (gunicorn, 2 workers),
and loads each with wrk (2 threads, 16 connections; bench/tasks.lua) for GET one, list
(20 tasks), create, update, toggle and delete, alternating the two apps over --rounds
rounds. Prints req/s, p50, p99 and errors (median of the rounds) and the ratio to the
baseline; then database round trips per request (through a counting TCP proxy), p50 with
10 ms added each way between app and database (20 ms round trip), RSS per worker, and
cold start (exec of the Procfile's web command to the first 200 from /health).

Everything runs on 127.0.0.1; the database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_api import db  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "tasks_api_bench_endpoints"
MODES = ["get", "list", "create", "update", "toggle", "delete"]
THREADS, CONNECTIONS = 2, 16
SECRET = secrets.token_urlsafe(32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)

    url = make_url(ADMIN_URL).set(database=DATABASE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_"))
    try:
        db.upgrade(url.set(drivername="postgresql+psycopg"))
        plain = url.render_as_string(hide_password=False)
        targets = seed(plain, work, options.rounds)
        results = load(plain, work, targets, options)
        _, _, trips = through_proxy(plain, delay=0.0, n=50)
        _, delayed, _ = through_proxy(plain, delay=0.010, n=15)
        extras = {
            "round trips": trips,
            "p50 at 20 ms RTT": {mode: statistics.median(v) for mode, v in delayed.items()},
        }
        report(results, extras, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


# --- data ---------------------------------------------------------------------------


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 7200}, SECRET)


def seed(url: str, work: Path, rounds: int) -> dict[str, Path]:
    """500 users with 20 tasks each to read and change; fresh tasks for every delete run."""
    per_run = 40_000
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version)"
            " SELECT gen_random_uuid(), 'user-' || (i % 500), 'Task ' || i, false,"
            " now() - i * interval '1 second', now() - i * interval '1 second', 1"
            " FROM generate_series(1, 10000) AS i"
        )
        conn.execute(
            "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version)"
            " SELECT gen_random_uuid(), 'doomed-' || (i %% 2000), 'Doomed ' || i, false,"
            " now(), now(), 1 FROM generate_series(1, %s) AS i",
            [per_run * rounds * 2],
        )
        conn.execute("VACUUM ANALYZE tasks")
        rows = conn.execute("SELECT user_id, id FROM tasks ORDER BY user_id, id").fetchall()
    tokens: dict[str, str] = {}
    hot, doomed = [], []
    for user, task in rows:
        line = f"{user} {task} {tokens.setdefault(user, token(user))}\n"
        (hot if user.startswith("user-") else doomed).append(line)
    files = {"hot": work / "hot.txt"}
    files["hot"].write_text("".join(hot))
    for n in range(rounds * 2):  # one delete slice per (round, app)
        files[f"doomed-{n}"] = work / f"doomed-{n}.txt"
        files[f"doomed-{n}"].write_text("".join(doomed[n * per_run : (n + 1) * per_run]))
    return files


# --- servers --------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """gunicorn with 2 workers: tasks_api as the Procfile runs it, or the baseline."""

    def __init__(self, kind: str, database_url: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PORT": str(self.port), "WEB_CONCURRENCY": "2"}
        if kind == "app":
            env |= {
                "DATABASE_URL": database_url,
                "AUTH_JWT_SECRET": SECRET,
                "SECRET_KEY": secrets.token_urlsafe(32),
                "LOG_LEVEL": "WARNING",
            }
            command = ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
        else:
            env["BASELINE_DATABASE_URL"] = database_url
            command = [
                "gunicorn",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{self.port}",
                "bench.baseline:app",
            ]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.cold_start = self._wait(kind)

    def _wait(self, kind: str) -> float:
        path = "/health" if kind == "app" else "/api/x/tasks"
        for _ in range(500):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", path)
                if connection.getresponse().status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.005)
            finally:
                connection.close()
        raise RuntimeError(f"{kind} did not start")

    def worker_rss_mib(self) -> list[float]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        sizes = []
        for pid in children.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            kib = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
            sizes.append(kib / 1024)
        return sizes

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- load -----------------------------------------------------------------------------


def wrk(port: int, mode: str, targets: Path, seconds: int) -> dict[str, float]:
    output = subprocess.run(
        [
            "wrk",
            "-t",
            str(THREADS),
            "-c",
            str(CONNECTIONS),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "tasks.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            mode,
            str(targets),
            str(THREADS),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),  # type: ignore[index]
        "p50": _ms(re.search(r"\s50%\s+([\d.]+\w+)", output)[1]),  # type: ignore[index]
        "p99": _ms(re.search(r"\s99%\s+([\d.]+\w+)", output)[1]),  # type: ignore[index]
        "errors": float(errors[1]) if errors else 0.0,
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load(
    url: str, work: Path, targets: dict[str, Path], options: argparse.Namespace
) -> dict[str, Any]:
    results: dict[str, Any] = {kind: {mode: [] for mode in MODES} for kind in ("app", "baseline")}
    results["rss"], results["cold start"] = [], []
    slice_number = 0
    for _ in range(options.rounds):
        for kind in ("baseline", "app"):
            server = Server(kind, url)
            if kind == "app":
                results["cold start"].append(server.cold_start)
            try:
                for mode in MODES:
                    file = targets["hot"]
                    if mode == "delete":
                        file = targets[f"doomed-{slice_number}"]
                        slice_number += 1
                    results[kind][mode].append(wrk(server.port, mode, file, options.seconds))
                if kind == "app":
                    results["rss"].extend(server.worker_rss_mib())
            finally:
                server.stop()
    return results


# --- round trips and latency through a TCP proxy -----------------------------------------


class Proxy:
    """Forwards 127.0.0.1:port to PostgreSQL, counting round trips and adding delay."""

    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.port, self.upstream_port, self.delay = free_port(), upstream_port, delay
        self.round_trips = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        # A round trip: the client speaks, then the server answers.
        state = {"client_spoke": False}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upward: bool) -> None:
            while data := await src.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if upward:
                    state["client_spoke"] = True
                elif state["client_spoke"]:
                    state["client_spoke"] = False
                    self.round_trips += 1
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


class Client:
    """One keep-alive connection acting as one user."""

    def __init__(self, port: int, user: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {
            "Authorization": f"Bearer {token(user)}",
            "Content-Type": "application/json",
        }
        self.base = f"/api/{user}/tasks"

    def call(self, method: str, path: str, body: str | None = None) -> tuple[float, Any]:
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        raw = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status < 300, (method, path, response.status)
        return elapsed, json.loads(raw) if raw else None


def plan(client: Client, mode: str, task: str, n: int) -> list[tuple[str, str, str | None]]:
    """n requests of one endpoint; a delete plan first creates the tasks it deletes."""
    base = client.base
    if mode == "delete":
        ids = [client.call("POST", base, '{"title": "doomed"}')[1]["id"] for _ in range(n)]
        return [("DELETE", f"{base}/{i}", None) for i in ids]
    return [
        {
            "get": ("GET", f"{base}/{task}", None),
            "list": ("GET", f"{base}?limit=20", None),
            "create": ("POST", base, '{"title": "x"}'),
            "update": ("PUT", f"{base}/{task}", f'{{"title": "renamed {i}"}}'),
            "toggle": ("PATCH", f"{base}/{task}/complete", None),
        }[mode]
        for i in range(n)
    ]


def through_proxy(
    url: str, delay: float, n: int
) -> tuple[Proxy, dict[str, list[float]], dict[str, float]]:
    """Each endpoint n times, one at a time, through a proxy to the database: the
    latencies, and the database round trips per request."""
    proxy = Proxy(make_url(url).port or 5432, delay=delay)
    proxied = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        user, task = conn.execute(
            "SELECT user_id, id::text FROM tasks WHERE user_id = 'user-1' LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    server = Server("app", proxied)
    try:
        client = Client(server.port, user)
        for mode in MODES:  # warm both workers' pools and statement caches
            for method, path, body in plan(client, mode, task, 4):
                client.call(method, path, body)
        times: dict[str, list[float]] = {}
        trips: dict[str, float] = {}
        for mode in MODES:
            requests = plan(client, mode, task, n)
            before = proxy.round_trips
            times[mode] = [client.call(method, path, body)[0] for method, path, body in requests]
            trips[mode] = (proxy.round_trips - before) / n
        return proxy, times, trips
    finally:
        server.stop()


# --- report ---------------------------------------------------------------------------


def report(
    results: dict[str, Any], extras: dict[str, dict[str, float]], options: argparse.Namespace
) -> None:
    def med(kind: str, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind][mode])

    print(
        f"\nwrk -t{THREADS} -c{CONNECTIONS} -d{options.seconds}s, gunicorn 2 workers each, local "
        f"PostgreSQL; medians of {options.rounds} alternating rounds; {platform.node()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| endpoint | req/s | p50 ms | p99 ms | errors | baseline req/s | ratio "
        "| DB round trips | p50 at 20 ms RTT (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in MODES:
        rps, base = med("app", mode, "rps"), med("baseline", mode, "rps")
        trips = extras["round trips"][mode]
        p50, p99 = med("app", mode, "p50"), med("app", mode, "p99")
        print(
            f"| {mode} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {med('app', mode, 'errors'):.0f} "
            f"| {base:.0f} | {rps / base:.2f}x | {trips:.2f} "
            f"| {extras['p50 at 20 ms RTT'][mode]:.1f} |"
        )
    rss = results["rss"]
    print(f"\nRSS per worker after load: {min(rss):.0f}-{max(rss):.0f} MiB")
    print(
        f"cold start to first /health 200: median {statistics.median(results['cold start']):.2f} s"
    )


if __name__ == "__main__":
    main()

"""Benchmark: every endpoint against a bare WSGI + psycopg-pool app doing the same SQL.

    python bench/endpoints.py [--seconds 5] [--rounds 3]

Installs wrk from Debian if missing, seeds a scratch PostgreSQL database, starts tasks_api
(gunicorn, 2 workers, as the Procfile does), bench/baseline.py (bare WSGI) and
bench/flask_baseline.py (plain Flask; both gunicorn, 2 workers, same SQL, under the app's
worker model: tasks_api.server.Worker with 4 threads, a pool of 4), and loads each
with wrk (2 threads, 16 connections; bench/tasks.lua) for GET one, list (20 tasks),
create, update, toggle and delete, alternating the apps over --rounds rounds. Prints
req/s, p50, p99 and errors (median of the rounds) and the ratio to the baseline; database
round trips per request (through a counting TCP proxy, in the steady state: after a
warm-up past psycopg's prepare on every worker's connection; any connection opened or
extra round trip while counting is shown below the table), also for a create with an
Idempotency-Key and its replay; p50 with 10 ms added each way between app and database
(20 ms round trip); plain Flask's ratio and each app's worker CPU time per request; PSS
per worker, and cold start (exec of the Procfile's web command to the first 200 from
/health).

    python bench/endpoints.py --network [--delay-ms 2] [--seconds 5] [--rounds 3]

The real network instead (GET one, list, create): a delaying proxy (bench/delay_proxy.c,
built with cc; epoll, one thread) adds --delay-ms per round trip between the app and
PostgreSQL, as a PaaS reaching Neon in the same region would. In each round, side by
side: tasks_api as configured (gunicorn.conf.py's threaded worker) on loopback with 16
and 64 connections, through the proxy with 64 and 256 (overload); the old default
(sync workers) on loopback with 16 and through the proxy with 64; the bare WSGI baseline
under the same threaded worker, on loopback and through the proxy with 64. Prints each
configuration's median req/s, p50, p99, non-2xx and transport errors, the ratios the
goals name, the proxy's CPU time, and the round trips per request.

Everything runs on 127.0.0.1; the database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
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
import uuid
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
KINDS = ("baseline", "flask", "app")  # the order of each round
THREADS, CONNECTIONS = 2, 16
# The baselines under the app's worker model (gunicorn.conf.py: WEB_THREADS default 4).
SAME_WORKER = ["--worker-class", "tasks_api.server.Worker", "--threads", "4"]
SECRET = secrets.token_urlsafe(32)
COUNTED, DELAYED = 50, 15  # requests per endpoint through the proxy: counted; at 20 ms RTT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--network", action="store_true", help="the delaying-proxy mode")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="per round trip")
    parser.add_argument("--web-threads", help="WEB_THREADS for tasks_api (default: its own)")
    parser.add_argument(
        "--efficiency", action="store_true", help="bench/efficiency.py: CPU and memory per request"
    )
    parser.add_argument("--before", help="with --efficiency: the version to compare against")
    options = parser.parse_args()
    if options.efficiency:
        import efficiency

        options.before = options.before or efficiency.BEFORE
        efficiency.run(options)
        return
    if shutil.which("wrk") is None:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)

    url = make_url(ADMIN_URL).set(database=DATABASE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_"))
    try:
        db.upgrade(url.set(drivername="postgresql+psycopg"))
        plain = url.render_as_string(hide_password=False)
        if options.network:
            targets = seed(plain, work, 0)
            network(plain, work, targets, options)
            return
        targets = seed(plain, work, options.rounds)
        results = load(plain, work, targets, options)
        counts, delayed, notes = through_proxy(plain, n=COUNTED, n_delayed=DELAYED)
        extras = {
            "round trips": counts,
            "p50 at 20 ms RTT": {mode: statistics.median(v) for mode, v in delayed.items()},
            "notes": notes,
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
        conn.execute("SET statement_timeout = 0")  # migration 0004's 5 s is for requests
        # Each in its user's inbox, in creation order (tasks_api/positions.py's keys:
        # ten digits, appending adds one), with a change position of its own.
        conn.execute(
            "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version,"
            " change_position, position) SELECT gen_random_uuid(), 'user-' || (i % 500),"
            " 'Task ' || i, false, now() - i * interval '1 second',"
            " now() - i * interval '1 second', 1, i, lpad((5000000000 - i)::text, 10, '0')"
            " FROM generate_series(1, 10000) AS i"
        )
        conn.execute(
            "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at, version,"
            " change_position, position) SELECT gen_random_uuid(), 'doomed-' || (i %% 2000),"
            " 'Doomed ' || i, false, now(), now(), 1, i, lpad((5000000000 + i)::text, 10, '0')"
            " FROM generate_series(1, %s) AS i",
            [per_run * rounds * len(KINDS)],
        )
        # Each user's change counter and task count, as the app keeps them: a delete takes
        # one off the count, which may not go below 0.
        conn.execute(
            "INSERT INTO sync_positions (user_id, position, tasks)"
            " SELECT user_id, max(change_position), count(*) FROM tasks GROUP BY user_id"
        )
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute("SELECT user_id, id FROM tasks ORDER BY user_id, id").fetchall()
    tokens: dict[str, str] = {}
    hot, doomed = [], []
    for user, task in rows:
        line = f"{user} {task} {tokens.setdefault(user, token(user))}\n"
        (hot if user.startswith("user-") else doomed).append(line)
    files = {"hot": work / "hot.txt"}
    files["hot"].write_text("".join(hot))
    for n in range(rounds * len(KINDS)):  # one delete slice per (round, app)
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
    """gunicorn with 2 workers: tasks_api as the Procfile runs it ("app"), the bare WSGI
    baseline ("baseline") or plain Flask over the same SQL ("flask")."""

    def __init__(
        self,
        kind: str,
        database_url: str,
        worker: list[str] | None = None,
        env_extra: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> None:
        """`worker`: gunicorn options for the worker model (default: the app's own
        config, and the same threaded worker for the baselines); `root`: the tree the
        app is served from (another version's, for bench/efficiency.py)."""
        self.port = free_port()
        env = {**os.environ, "PORT": str(self.port), "WEB_CONCURRENCY": "2", **(env_extra or {})}
        if kind == "app":
            env |= {
                "DATABASE_URL": database_url,
                "AUTH_JWT_SECRET": SECRET,
                "SECRET_KEY": secrets.token_urlsafe(32),
            }
            command = ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
        elif kind == "floor":  # bench/floor.py, under gunicorn's stock threaded worker
            env["FLOOR_DATABASE_URL"] = database_url
            command = ["gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{self.port}"]
            command += ["--worker-class", "gthread", "--threads", "4", "bench.floor:app"]
        else:
            env["BASELINE_DATABASE_URL"] = database_url
            command = [
                "gunicorn",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{self.port}",
                "bench.flask_baseline:app" if kind == "flask" else "bench.baseline:app",
            ]
        if kind != "floor":
            command[1:1] = worker if worker is not None else ([] if kind == "app" else SAME_WORKER)
        if kind != "app":
            # gunicorn reads ./gunicorn.conf.py when no config is named: the baselines
            # would run the app's start-up hooks (importing tasks_api into their master,
            # checking its database) and its settings. An empty config instead.
            command[1:1] = ["--config", os.devnull]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=root,
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

    def warm(self, targets: Path) -> None:
        """One second of load, not counted. /health answers once the first worker is up;
        connections opened while the other is still importing the app would all stay
        with the first (a kept-alive connection never moves), and the run would measure
        one worker. Also fills each worker's pool and psycopg's prepared statements."""
        wrk(self.port, "get", targets, 1, 64)

    def worker_pss_mib(self) -> list[float]:
        """Each worker's proportional set size: its own pages, and its share of those it
        shares with the master and the other worker (what it adds to the dyno's memory;
        RSS counts shared pages in full, in every worker)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        sizes = []
        for pid in children.read_text().split():
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            kib = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M)[1])  # type: ignore[index]
            sizes.append(kib / 1024)
        return sizes

    def worker_cpu_seconds(self) -> float:
        """User + system CPU time used so far by the workers (not the master)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        ticks = 0
        for pid in children.read_text().split():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- load -----------------------------------------------------------------------------


def wrk(
    port: int, mode: str, targets: Path, seconds: int, connections: int = CONNECTIONS
) -> dict[str, float]:
    output = subprocess.run(
        [
            "wrk",
            "-t",
            str(THREADS),
            "-c",
            str(connections),
            "--timeout",
            "10s",
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
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "transport": float(sum(map(int, socket_errors.groups()))) if socket_errors else 0.0,
        "requests": float(re.search(r"(\d+) requests in", output)[1]),  # type: ignore[index]
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
    results: dict[str, Any] = {kind: {mode: [] for mode in MODES} for kind in KINDS}
    results["pss"], results["cold start"] = [], []
    slice_number = 0
    for _ in range(options.rounds):
        for kind in KINDS:
            server = Server(kind, url)
            if kind == "app":
                results["cold start"].append(server.cold_start)
            try:
                server.warm(targets["hot"])
                for mode in MODES:
                    file = targets["hot"]
                    if mode == "delete":
                        file = targets[f"doomed-{slice_number}"]
                        slice_number += 1
                    cpu = server.worker_cpu_seconds()
                    result = wrk(server.port, mode, file, options.seconds)
                    cpu = server.worker_cpu_seconds() - cpu
                    result["cpu_us"] = cpu * 1e6 / result["requests"]
                    results[kind][mode].append(result)
                if kind == "app":
                    results["pss"].extend(server.worker_pss_mib())
            finally:
                server.stop()
    return results


# --- round trips and latency through a TCP proxy -----------------------------------------

# The proxy's extra rows: POST with a fresh Idempotency-Key each time (the app answers 201),
# and the same POST with the same key again (the replay; its original is not counted).
KEY_MODES = ["create with key", "replayed key"]
LABELS = {
    "create with key": "create with Idempotency-Key",
    "replayed key": "replayed Idempotency-Key",
}
# psycopg prepares a statement server-side on its 6th run on a connection (prepare_threshold
# 5, tasks_api's default), one extra round trip, once per statement and connection. Warm-up
# runs every endpoint until each worker's connection has served it this often, and at least
# WARM_UP times in all, so that the count sees the steady state.
PREPARE_THRESHOLD = 5
WARM_RUNS = PREPARE_THRESHOLD + 3
WARM_UP, WARM_UP_MAX = 16, 200
WORKERS = 2  # the proxied app's gunicorn workers: one pool, so one connection, each


class Proxy:
    """Forwards 127.0.0.1:port to PostgreSQL, counting round trips per connection and
    adding delay (settable while running)."""

    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.port, self.upstream_port, self.delay = free_port(), upstream_port, delay
        # Round trips of each connection, in the order they were opened; and the open ones.
        self.trips: list[int] = []
        self.open: set[int] = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait()

    @property
    def round_trips(self) -> int:
        return sum(self.trips)

    def snapshot(self) -> list[int]:
        return self.trips.copy()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(self.trips)
        self.trips.append(0)
        self.open.add(number)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        # A round trip: the client speaks, then the server answers.
        state = {"client_spoke": False}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upward: bool) -> None:
            # Each chunk leaves `delay` after it came, as on a network: a reader and a
            # writer, so that a chunk right behind another is not delayed twice (a
            # pipelined write is answered in more than one chunk).
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def send() -> None:
                while (item := await queue.get())[1]:
                    due, data = item
                    await asyncio.sleep(max(0.0, due - self.loop.time()))
                    dst.write(data)
                    await dst.drain()
                dst.close()

            sender = asyncio.ensure_future(send())
            while data := await src.read(65536):
                if upward:
                    state["client_spoke"] = True
                elif state["client_spoke"]:
                    state["client_spoke"] = False
                    self.trips[number] += 1
                queue.put_nowait((self.loop.time() + self.delay, data))
            queue.put_nowait((0.0, b""))
            await sender

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            self.open.discard(number)


class Client:
    """One keep-alive connection acting as one user."""

    def __init__(self, port: int, user: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {
            "Authorization": f"Bearer {token(user)}",
            "Content-Type": "application/json",
        }
        self.base = f"/api/{user}/tasks"

    def call(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[float, Any]:
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=self.headers | (headers or {}))
        response = self.connection.getresponse()
        raw = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status < 300, (method, path, response.status)
        return elapsed, json.loads(raw) if raw else None


Request = tuple[str, str, str | None, dict[str, str]]


def next_request(client: Client, mode: str, task: str, i: int) -> Request:
    """The i-th request of one endpoint, after the setup it needs (not counted): a delete
    first creates the task it deletes, a replay first sends the original."""
    base = client.base
    if mode == "delete":
        created = client.call("POST", base, '{"title": "doomed"}')[1]["id"]
        return "DELETE", f"{base}/{created}", None, {}
    if mode == "create with key":
        return "POST", base, '{"title": "x"}', {"Idempotency-Key": str(uuid.uuid4())}
    if mode == "replayed key":
        original: Request = ("POST", base, '{"title": "x"}', {"Idempotency-Key": str(uuid.uuid4())})
        client.call(*original)
        return original
    return {
        "get": ("GET", f"{base}/{task}", None, {}),
        "list": ("GET", f"{base}?limit=20", None, {}),
        "create": ("POST", base, '{"title": "x"}', {}),
        "update": ("PUT", f"{base}/{task}", f'{{"title": "renamed {i}"}}', {}),
        "toggle": ("PATCH", f"{base}/{task}/complete", None, {}),
    }[mode]


@dataclasses.dataclass
class Count:
    """Database round trips of one endpoint's counted requests, per connection."""

    requests: int = 0
    round_trips: int = 0
    # connection number -> [requests it served, its round trips during them]
    connections: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    new: set[int] = dataclasses.field(default_factory=set)  # opened during the count

    def add(self, before: list[int], after: list[int]) -> set[int]:
        """Account one request from the proxy's counts before and after it; returns the
        connections it used."""
        self.requests += 1
        used = set()
        for number, trips in enumerate(after):
            delta = trips - (before[number] if number < len(before) else 0)
            if number >= len(before):
                self.new.add(number)
            if delta:
                used.add(number)
                self.round_trips += delta
                served = self.connections.setdefault(number, [0, 0])
                served[0] += 1
                served[1] += delta
        return used

    @property
    def per_request(self) -> float:
        return self.round_trips / self.requests

    def steady(self) -> float | None:
        """Round trips per request on the connections open before the count."""
        old = [v for number, v in self.connections.items() if number not in self.new]
        requests = sum(served for served, _ in old)
        return sum(trips for _, trips in old) / requests if requests else None


def warm_up(
    proxy: Proxy, clients: list[Client], mode: str, task: str
) -> tuple[int, dict[int, int]]:
    """Run one endpoint until every worker's connection has served it WARM_RUNS times
    (past psycopg's prepare), and at least WARM_UP times; returns the requests sent and
    how many each connection served.

    One client at a time lands on the same worker nearly always (one saw 197 of 200), so
    the clients (one per worker) send together: a sync worker busy with one request
    leaves the next to another."""
    served: dict[int, int] = {}
    sent = 0
    barrier = threading.Barrier(len(clients))

    def call(client: Client, request: Request) -> None:
        barrier.wait(timeout=30)
        client.call(*request)

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        while sent < WARM_UP_MAX:
            open_now = proxy.open.copy()  # the proxy's thread may be adding one
            ready = sum(1 for number in open_now if served.get(number, 0) >= WARM_RUNS)
            if sent >= WARM_UP and ready >= WORKERS and ready == len(open_now):
                break
            requests = [next_request(c, mode, task, sent + k) for k, c in enumerate(clients)]
            before = proxy.snapshot()
            list(pool.map(call, clients, requests))
            used = Count().add(before, proxy.snapshot())
            for number in used:  # a worker serves one request at a time, on one connection
                served[number] = served.get(number, 0) + max(1, len(clients) // len(used))
            sent += len(clients)
    return sent, served


def through_proxy(
    url: str, n: int, n_delayed: int, delay: float = 0.010
) -> tuple[dict[str, Count], dict[str, list[float]], list[str]]:
    """The app with a proxy between it and the database: each endpoint warmed up, then n
    times one at a time, counting the database round trips; then n_delayed times with
    `delay` added each way, for the latencies. Also returns notes on the warm-up."""
    proxy = Proxy(make_url(url).port or 5432)
    proxied = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        user, task = conn.execute(
            "SELECT user_id, id::text FROM tasks WHERE user_id = 'user-1' LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    server = Server("app", proxied)
    notes = []
    try:
        client = Client(server.port, user)
        clients = [client, *(Client(server.port, user) for _ in range(WORKERS - 1))]
        counts: dict[str, Count] = {}
        for mode in [*MODES, *KEY_MODES]:
            sent, served = warm_up(proxy, clients, mode, task)
            if len(served) < WORKERS or min(served.values()) < WARM_RUNS:
                notes.append(
                    f"{LABELS.get(mode, mode)}: warm-up short: {sent} requests, served "
                    f"{sorted(served.values())} by connection (wanted {WARM_RUNS} or more on "
                    f"each of {WORKERS})"
                )
            counts[mode] = count = Count()
            for i in range(n):
                request = next_request(client, mode, task, i)
                before = proxy.snapshot()
                client.call(*request)
                count.add(before, proxy.snapshot())
        proxy.delay = delay
        times: dict[str, list[float]] = {}
        for mode in MODES:
            times[mode] = []
            for i in range(n_delayed):
                request = next_request(client, mode, task, i)
                times[mode].append(client.call(*request)[0])
        return counts, times, notes
    finally:
        server.stop()


# --- the real network: a delaying proxy in front of PostgreSQL -----------------------------

NETWORK_MODES = ["get", "list", "create"]
SYNC = ["--worker-class", "sync", "--threads", "1"]  # the default before the threaded worker


@dataclasses.dataclass(frozen=True)
class Setup:
    """One column of the network table: which app, worker model, path and load."""

    label: str
    kind: str  # app or baseline
    worker: str  # "threads" (as configured) or "sync"
    proxied: bool
    connections: int


def network_setups(delay: str) -> list[Setup]:
    return [
        Setup("tasks_api, loopback, 16 connections", "app", "threads", False, 16),
        Setup("tasks_api sync (old default), loopback, 16", "app", "sync", False, 16),
        Setup("tasks_api, loopback, 64", "app", "threads", False, 64),
        Setup("bare WSGI floor (same worker), loopback, 64", "baseline", "threads", False, 64),
        Setup(f"tasks_api, {delay}, 64", "app", "threads", True, 64),
        Setup(f"tasks_api sync (old default), {delay}, 64", "app", "sync", True, 64),
        Setup(f"bare WSGI floor (same worker), {delay}, 64", "baseline", "threads", True, 64),
        Setup(f"tasks_api, {delay}, 256 (overload)", "app", "threads", True, 256),
    ]


class DelayProxy:
    """bench/delay_proxy.c, built here, adding `delay_ms` per round trip."""

    def __init__(self, work: Path, upstream_port: int, delay_ms: float) -> None:
        binary = work / "delay_proxy"
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("--network needs a C compiler (apt-get install gcc)")
        source = ROOT / "bench" / "delay_proxy.c"
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
        self.port = free_port()
        one_way_us = str(int(delay_ms * 1000 / 2))
        self.process = subprocess.Popen(
            [str(binary), str(self.port), str(upstream_port), one_way_us]
        )
        time.sleep(0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def network(url: str, work: Path, targets: dict[str, Path], options: argparse.Namespace) -> None:
    delay = f"{options.delay_ms:g} ms"
    setups = network_setups(delay)
    proxy = DelayProxy(work, make_url(url).port or 5432, options.delay_ms)
    proxied = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
    app_env = {"WEB_THREADS": options.web_threads} if options.web_threads else {}
    results: dict[Setup, dict[str, list[dict[str, float]]]] = {
        setup: {mode: [] for mode in NETWORK_MODES} for setup in setups
    }
    proxy_cpu: list[float] = []  # share of one CPU while a proxied run lasted
    started = time.monotonic()
    try:
        for _ in range(options.rounds):
            # One server per (app, worker, path), each serving its setups' loads in turn.
            servers: dict[tuple[str, str, bool], list[Setup]] = {}
            for setup in setups:
                servers.setdefault((setup.kind, setup.worker, setup.proxied), []).append(setup)
            for (kind, worker, via_proxy), group in servers.items():
                if kind == "app":
                    model = SYNC if worker == "sync" else []
                    env = app_env
                else:
                    threads = options.web_threads or "4"
                    model = [*SAME_WORKER[:-1], threads]
                    env = {"BASELINE_POOL_SIZE": threads}
                server = Server(kind, proxied if via_proxy else url, model, env)
                try:
                    server.warm(targets["hot"])
                    for setup in group:
                        for mode in NETWORK_MODES:
                            cpu, proxy_before = server.worker_cpu_seconds(), proxy.cpu_seconds()
                            wall = time.monotonic()
                            result = wrk(
                                server.port,
                                mode,
                                targets["hot"],
                                options.seconds,
                                setup.connections,
                            )
                            wall = time.monotonic() - wall
                            result["cpu_us"] = (
                                (server.worker_cpu_seconds() - cpu) * 1e6 / result["requests"]
                            )
                            if via_proxy:
                                proxy_cpu.append((proxy.cpu_seconds() - proxy_before) / wall)
                            results[setup][mode].append(result)
                finally:
                    server.stop()
        load_minutes = (time.monotonic() - started) / 60
    finally:
        proxy.stop()
    counts, _, notes = through_proxy(url, n=COUNTED, n_delayed=0)
    network_report(setups, results, proxy_cpu, counts, notes, load_minutes, options)


def network_report(
    setups: list[Setup],
    results: dict[Setup, dict[str, list[dict[str, float]]]],
    proxy_cpu: list[float],
    counts: dict[str, Count],
    notes: list[str],
    load_minutes: float,
    options: argparse.Namespace,
) -> None:
    def med(setup: Setup, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[setup][mode])

    delay = f"{options.delay_ms:g} ms"
    threads = options.web_threads or "as configured"
    print(
        f"\nwrk -t{THREADS} -d{options.seconds}s, 2 gunicorn workers each (tasks_api threads: "
        f"{threads}), local PostgreSQL, {delay} added per database round trip by "
        f"bench/delay_proxy.c where it says so; medians of {options.rounds} rounds, setups "
        f"alternating within each; {platform.node()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d')}; load took {load_minutes:.1f} min\n"
    )
    print("| setup | GET one | list (20) | create |")
    print("|---|---|---|---|")
    for setup in setups:
        cells = []
        for mode in NETWORK_MODES:
            cell = (
                f"{med(setup, mode, 'rps'):.0f} req/s, p50 {med(setup, mode, 'p50'):.0f} / "
                f"p99 {med(setup, mode, 'p99'):.0f} ms"
            )
            errors = med(setup, mode, "errors") + med(setup, mode, "transport")
            if errors:
                cell += (
                    f", {med(setup, mode, 'errors'):.0f} non-2xx, "
                    f"{med(setup, mode, 'transport'):.0f} transport errors"
                )
            cells.append(cell)
        print(f"| {setup.label} | " + " | ".join(cells) + " |")

    loop16, sync16 = setups[0], setups[1]
    loop64, base_loop, net64, sync_net, base_net, overload = setups[2:]
    print("\n| goal | GET one | list (20) | create |")
    print("|---|---|---|---|")

    def ratio_row(label: str, top: Setup, bottom: Setup) -> None:
        values = [med(top, m, "rps") / med(bottom, m, "rps") for m in NETWORK_MODES]
        print(f"| {label} | " + " | ".join(f"{v:.2f}x" for v in values) + " |")

    ratio_row(f"{delay}, 64: throughput / same build on loopback, 64 (>= 0.8)", net64, loop64)
    print(
        f"| {delay}, 64: p99 / p50 (<= 4) | "
        + " | ".join(f"{med(net64, m, 'p99') / med(net64, m, 'p50'):.1f}" for m in NETWORK_MODES)
        + " |"
    )
    ratio_row("loopback, 16: throughput / old sync default (>= 0.85)", loop16, sync16)
    print(
        f"| {delay}, 256: transport errors (0), p99 (< 2000 ms) | "
        + " | ".join(
            f"{med(overload, m, 'transport'):.0f}, {med(overload, m, 'p99'):.0f} ms"
            for m in NETWORK_MODES
        )
        + " |"
    )
    ratio_row(f"{delay}, 64: tasks_api / old sync default", net64, sync_net)
    ratio_row(f"{delay}, 64: tasks_api / bare floor, same worker", net64, base_net)
    ratio_row("loopback, 64: tasks_api / bare floor, same worker", loop64, base_loop)
    ratio_row(f"bare floor: {delay} / loopback, 64", base_net, base_loop)
    print(
        "\nworker CPU per request (us), GET one / list / create: "
        + "; ".join(
            f"{setup.label}: " + " / ".join(f"{med(setup, m, 'cpu_us'):.0f}" for m in NETWORK_MODES)
            for setup in (loop16, sync16, net64, overload)
        )
    )
    if proxy_cpu:
        print(
            f"delay proxy CPU while loaded: median {statistics.median(proxy_cpu):.0%}, "
            f"max {max(proxy_cpu):.0%} of one CPU (single-threaded, so 100% would be its limit)"
        )
    print(
        "DB round trips per request (tasks_api as configured, counted one at a time): "
        + ", ".join(f"{mode} {counts[mode].per_request:.2f}" for mode in NETWORK_MODES)
        + f"; create with Idempotency-Key {counts['create with key'].per_request:.2f}"
    )
    for line in notes:
        print(line)


# --- report ---------------------------------------------------------------------------


def round_trip_lines(counts: dict[str, Count], notes: list[str]) -> list[str]:
    """What goes under the table about the round trips: the Idempotency-Key creates, and
    whatever would make a figure more than the endpoint's own statements."""
    lines = [
        f"DB round trips: {COUNTED} requests per endpoint, one at a time, through a counting "
        f"TCP proxy, after a warm-up that ran each endpoint at least {WARM_RUNS} times on "
        f"each worker's connection (psycopg prepares a statement on its "
        f"{PREPARE_THRESHOLD + 1}th run there: one more round trip, once).",
        f"create with Idempotency-Key: {counts['create with key'].per_request:.2f} round trips"
        " (goal: at most 2)",
        f"replayed Idempotency-Key: {counts['replayed key'].per_request:.2f} round trips",
    ]
    for mode, count in counts.items():
        label = LABELS.get(mode, mode)
        if count.new:
            opened = len(count.new)
            served, trips = (
                sum(column)
                for column in zip(
                    *(count.connections.get(n, [0, 0]) for n in count.new), strict=True
                )
            )
            steady = count.steady()
            lines.append(
                f"{label}: {opened} new connection{'s' if opened > 1 else ''} during the count; "
                f"the {served} request{'s' if served != 1 else ''} on "
                f"{'them' if opened > 1 else 'it'} took {trips} round trips, opening included"
                + (
                    f" ({steady:.2f} per request on the connections already open)"
                    if steady is not None
                    else ""
                )
            )
        if count.round_trips % count.requests:
            spread = ", ".join(
                f"#{number} {trips}/{served}"
                for number, (served, trips) in sorted(count.connections.items())
            )
            lines.append(
                f"{label}: round trips/requests per connection: {spread} (a statement's "
                f"{PREPARE_THRESHOLD + 1}th run on a connection prepares it: one more, once)"
            )
    return lines + notes


def report(results: dict[str, Any], extras: dict[str, Any], options: argparse.Namespace) -> None:
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
        trips = extras["round trips"][mode].per_request
        p50, p99 = med("app", mode, "p50"), med("app", mode, "p99")
        print(
            f"| {mode} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {med('app', mode, 'errors'):.0f} "
            f"| {base:.0f} | {rps / base:.2f}x | {trips:.2f} "
            f"| {extras['p50 at 20 ms RTT'][mode]:.1f} |"
        )
    print("\n" + "\n".join(round_trip_lines(extras["round trips"], extras["notes"])))
    print(
        "\nThe framework's share: plain Flask over the same pool and SQL "
        "(bench/flask_baseline.py), and the workers' CPU time per request (user + system, "
        "from /proc; steadier than req/s on a shared machine).\n"
    )
    print(
        "| endpoint | baseline req/s | plain Flask req/s | ratio | tasks_api ratio "
        "| worker CPU per request: baseline / plain Flask / tasks_api |"
    )
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        base, flask = med("baseline", mode, "rps"), med("flask", mode, "rps")
        cpu = " / ".join(f"{med(kind, mode, 'cpu_us'):.0f}" for kind in KINDS)
        print(
            f"| {mode} | {base:.0f} | {flask:.0f} | {flask / base:.2f}x "
            f"| {med('app', mode, 'rps') / base:.2f}x | {cpu} us |"
        )
    pss = results["pss"]
    print(f"\nPSS per worker after load: {min(pss):.1f}-{max(pss):.1f} MiB")
    print(
        f"cold start to first /health 200: median {statistics.median(results['cold start']):.2f} s"
    )


if __name__ == "__main__":
    main()

"""Benchmark: worker CPU and memory per request, this tree against an earlier version of
tasks_api and the bare floor, in one run (`bench/endpoints.py --efficiency` runs it).

    python bench/efficiency.py [--before REV] [--rounds 3] [--seconds 5] [--delay-ms 2]

Three servers, each gunicorn with 2 workers: the floor (bench/floor.py: a bare WSGI
function whose database writes the JSON, under gunicorn's stock threaded worker and
settings, 4 threads, a psycopg_pool pool of 4 each), tasks_api at REV (the version before the
efficiency work, from `git archive`, served from its own tree with its own
gunicorn.conf.py) and tasks_api as it is here. Each round, in an order that turns:
each server alone (cold start: exec to the first 200 from /health, or from a list for
the floor; tasks_api's from its source as checked out and with its bytecode compiled as
a build step leaves it, docs/deployment.md; beside the time a bare `python -c` takes to
import the stack tasks_api is built on, gunicorn to PyJWT, its lower bound; then PSS
per worker, /proc/PID/smaps_rollup, after a second of each load);
then the three up at once, loaded in turns with wrk (2 threads, 16 connections,
bench/tasks.lua) on loopback for GET one, list (20) and create: requests per second, and
worker CPU per request (the CPU seconds of the worker processes over the requests
served). Turns of seconds, not a server's whole run after another's: the machine's speed
drifts over minutes. Then the three again, on loopback and through
bench/delay_proxy.c adding --delay-ms per database round trip, six servers up at once,
GET one and list with 64 connections, in turns; with the proxy's own CPU per request
(it runs on the same cores), and the floor's ratio as what the machine allows.

Prints the medians of the rounds and the goals of issue 22: worker CPU per request at
least 25% below REV's on GET one, list and create; at least 0.75x the floor's throughput
on loopback with 16 connections (GET one, list); at --delay-ms with 64 connections at
least 0.85x the same build's loopback throughput (GET one, list); PSS per worker at most
40 MiB; cold start (compiled) at most 0.6 s. PostgreSQL at BENCH_POSTGRES_URL (default:
the local one); the scratch database is dropped afterwards.

    python bench/efficiency.py --profile get|list|create [--seconds 5]

Where a worker's time goes instead: this tree with one worker under wrk's 16 connections,
sampled by py-spy (installed apart: it is no dependency of the project) while a thread
holds the GIL; a flame graph in artifacts/profile-MODE.svg, and the functions in the most
samples printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from endpoints import ADMIN_URL, DelayProxy, Server, seed, wrk  # noqa: E402

from tasks_api import db  # noqa: E402

DATABASE = "tasks_api_bench_efficiency"
# The last commit before issue 22's work: the version this one is measured against.
BEFORE = "0dbd73bae974eb10fe1087861c025e7f7fbd1f85"
LOOPBACK_MODES = ("get", "list", "create")
NETWORK_MODES = ("get", "list")
KINDS = ("floor", "before", "after")
# The build step of docs/deployment.md: the app's own Python, which a checkout holds as
# source only, compiled ahead (pip compiled the libraries as it installed them).
BUILD = ("compileall", "-q", "--invalidation-mode", "checked-hash")
BUILT = ("tasks_api", "wsgi.py", "gunicorn.conf.py")
# What any app on the project's fixed stack imports before it can answer, with the
# collector off as tasks_api imports it: a cold start's lower bound for tasks_api (the
# floor imports only gunicorn and psycopg).
STACK_IMPORTS = (
    "import gc; gc.disable(); import gunicorn.arbiter, gunicorn.workers.gthread, flask,"
    " flask_smorest, flask_cors, marshmallow, sqlalchemy.orm, psycopg, jwt, dotenv"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="the version to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="per database round trip")
    parser.add_argument(
        "--profile",
        choices=("get", "list", "create"),
        help="instead: profile one worker of this tree under that load with py-spy",
    )
    options = parser.parse_args()
    if options.profile:
        profile(options)
    else:
        run(options)


@contextlib.contextmanager
def scratch() -> Iterator[tuple[URL, Path, Path]]:
    """The seeded scratch database (bench/endpoints.py's 500 users of 20 tasks), a work
    folder, and the file of wrk's targets; wrk installed if missing. Dropped after."""
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    url = make_url(ADMIN_URL).set(database=DATABASE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    work = Path(tempfile.mkdtemp(prefix="tasks_api_bench_efficiency_"))
    try:
        db.upgrade(url.set(drivername="postgresql+psycopg"))
        yield url, work, seed(url.render_as_string(hide_password=False), work, 0)["hot"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def run(options: argparse.Namespace) -> None:
    with scratch() as (url, work, targets):
        measure(options, url, work, targets)


def measure(options: argparse.Namespace, url: URL, work: Path, targets: Path) -> None:
    plain = url.render_as_string(hide_password=False)
    proxy = None
    try:
        before = checkout(options.before, work / "before")
        proxy = DelayProxy(work, url.port or 5432, options.delay_ms)
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        roots = {"floor": ROOT, "before": before, "after": ROOT}
        results: dict[str, Any] = {}
        for n in range(options.rounds):
            kinds = KINDS[n % 3 :] + KINDS[: n % 3]
            alone(kinds, roots, plain, targets, results)
            loaded(kinds, roots, plain, targets, results, options.seconds)
            network(kinds, roots, plain, proxied, proxy, targets, results, options.seconds)
        report(results, options)
    finally:
        if proxy is not None:
            proxy.stop()


def start(kind: str, database: str, root: Path) -> Server:
    return Server("floor" if kind == "floor" else "app", database, root=root)


def alone(
    kinds: tuple[str, ...], roots: dict[str, Path], database: str, targets: Path, results: Any
) -> None:
    """Each server by itself: its cold start, and its PSS per worker after a little of
    each load (PSS shares a page among every process mapping it: measured beside the
    other servers, which map the same libraries, it would come out smaller)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", STACK_IMPORTS], cwd=ROOT, check=True)
    add(results, "stack", "imports", time.perf_counter() - started)
    for kind in kinds:
        if kind != "floor":
            # A start from a checkout, then from the tree a build step leaves (docs/
            # deployment.md): the package's bytecode compiled ahead.
            bytecode(roots[kind], compiled=False)
            server = start(kind, database, roots[kind])
            server.stop()
            add(results, kind, "cold start from source", server.cold_start)
            bytecode(roots[kind], compiled=True)
        server = start(kind, database, roots[kind])
        try:
            add(results, kind, "cold start", server.cold_start)
            server.warm(targets)
            for mode in LOOPBACK_MODES:
                wrk(server.port, mode, targets, 1, 16)
            for pss in server.worker_pss_mib():
                add(results, kind, "pss", pss)
        finally:
            server.stop()


def bytecode(root: Path, *, compiled: bool) -> None:
    """The app's tree with no bytecode of its own, or with it compiled as
    `python -m compileall` at build time leaves it."""
    for cache in [root / "__pycache__", *(root / "tasks_api").rglob("__pycache__")]:
        shutil.rmtree(cache, ignore_errors=True)
    if compiled:
        command = [sys.executable, "-m", *BUILD, *BUILT]
        subprocess.run(command, cwd=root, check=True, stdout=subprocess.DEVNULL)


def loaded(
    kinds: tuple[str, ...],
    roots: dict[str, Path],
    database: str,
    targets: Path,
    results: Any,
    seconds: int,
) -> None:
    """The three servers up at once, idle but for the one under load, which takes turns
    load by load: compared seconds apart rather than a minute apart, as the machine's
    speed drifts in minutes."""
    specs = {kind: (kind, database, roots[kind]) for kind in kinds}
    with up_at_once(specs, targets) as servers:
        for mode in LOOPBACK_MODES:
            for kind, server in servers.items():
                cpu = server.worker_cpu_seconds()
                result = wrk(server.port, mode, targets, seconds, 16)
                cpu = server.worker_cpu_seconds() - cpu
                add(results, kind, f"{mode} rps", result["rps"])
                add(results, kind, f"{mode} cpu", cpu * 1e6 / result["requests"])
                add(results, kind, f"{mode} errors", result["errors"] + result["transport"])


def network(
    kinds: tuple[str, ...],
    roots: dict[str, Path],
    plain: str,
    proxied: str,
    proxy: DelayProxy,
    targets: Path,
    results: Any,
    seconds: int,
) -> None:
    """The three servers on loopback and through the delay proxy, six up at once,
    taking turns, with 64 connections. The floor's own ratio is what the machine gives:
    the proxy runs on the same two cores, and its CPU per request is counted too."""
    paths = (("loopback", plain), ("network", proxied))
    specs = {
        (kind, path): (kind, database, roots[kind]) for kind in kinds for path, database in paths
    }
    with up_at_once(specs, targets) as servers:
        for mode in NETWORK_MODES:
            for (kind, path), server in servers.items():
                used = proxy.cpu_seconds()
                result = wrk(server.port, mode, targets, seconds, 64)
                add(results, kind, f"{mode} {path} 64 rps", result["rps"])
                if path == "network":  # on loopback the proxy carries nothing
                    cpu = proxy.cpu_seconds() - used
                    add(results, kind, f"{mode} proxy cpu", cpu * 1e6 / result["requests"])


@contextlib.contextmanager
def up_at_once(
    specs: dict[Any, tuple[str, str, Path]], targets: Path
) -> Iterator[dict[Any, Server]]:
    """A server per spec (kind, database, root), each warmed; all stopped after."""
    servers: dict[Any, Server] = {}
    try:
        for key, spec in specs.items():
            servers[key] = start(*spec)
        for server in servers.values():
            server.warm(targets)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def profile(options: argparse.Namespace) -> None:
    """Where a worker's time goes: py-spy samples one worker (of one) of this tree, only
    while a thread holds the GIL, under wrk's 16 connections; writes a flame graph
    (SVG) and prints the functions that took the most samples, themselves and below."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit(
            "--profile needs py-spy, which is not a dependency of the project: "
            "python3 -m venv /tmp/py-spy && /tmp/py-spy/bin/pip install py-spy, "
            "then PATH=/tmp/py-spy/bin:$PATH"
        )
    with scratch() as (url, _work, targets):
        server = Server(
            "app", url.render_as_string(hide_password=False), env_extra={"WEB_CONCURRENCY": "1"}
        )
        try:
            server.warm(targets)
            (worker,) = (
                Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
                .read_text()
                .split()
            )
            load = threading.Thread(
                target=wrk,
                args=(server.port, options.profile, targets, 2 * options.seconds + 2, 16),
            )
            load.start()
            time.sleep(1)
            svg, raw = (
                ROOT / "artifacts" / f"profile-{options.profile}.{kind}" for kind in ("svg", "txt")
            )
            svg.parent.mkdir(exist_ok=True)
            for output, kind in ((svg, "flamegraph"), (raw, "raw")):
                subprocess.run(
                    [
                        spy,
                        "record",
                        "--pid",
                        worker,
                        "--gil",
                        "--nonblocking",
                        "--rate",
                        "250",
                        "--duration",
                        str(options.seconds),
                        "--format",
                        kind,
                        "-o",
                        str(output),
                    ],
                    check=True,
                    capture_output=True,
                )
            load.join()
        finally:
            server.stop()
        print(f"flame graph: {svg}\n")
        summarize(raw)


def summarize(raw: Path, top: int = 30) -> None:
    """The functions in most samples (a function counted once a sample, wherever it is
    on the stack), from py-spy's raw output."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        names = {
            re.sub(r":\d+\)$", ")", frame).split("site-packages/")[-1] for frame in stack.split(";")
        }
        for name in names:
            counts[name] = counts.get(name, 0) + int(n)
    for name, n in sorted(counts.items(), key=lambda item: -item[1])[:top]:
        print(f"{100 * n / total:5.1f}%  {name}")


def checkout(revision: str, into: Path) -> Path:
    """The tree at `revision`, as `git archive` gives it."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def add(results: dict[str, Any], kind: str, key: str, value: float) -> None:
    results.setdefault(kind, {}).setdefault(key, []).append(value)


def report(results: dict[str, Any], options: argparse.Namespace) -> None:
    def med(kind: str, key: str) -> float:
        return statistics.median(results[kind][key])

    revision = subprocess.run(
        ["git", "rev-parse", "--short", options.before], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"\n{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()},"
        f" {time.strftime('%Y-%m-%d')}; medians of {options.rounds} rounds, the servers"
        f" loaded in turns; wrk -t2 -d{options.seconds}s; before = {revision}\n"
    )
    print("| loopback, 16 connections | floor | before | after |")
    print("|---|---|---|---|")
    for mode in LOOPBACK_MODES:
        cells = [
            f"{med(k, f'{mode} rps'):.0f} req/s, {med(k, f'{mode} cpu'):.0f} us" for k in KINDS
        ]
        print(f"| {mode} (req/s, worker CPU per request) | " + " | ".join(cells) + " |")
    print(
        "| PSS per worker (MiB), median (max) | "
        + " | ".join(f"{med(k, 'pss'):.1f} ({max(results[k]['pss']):.1f})" for k in KINDS)
        + " |"
    )
    print(
        "| cold start, bytecode compiled at build (s) | "
        + " | ".join(f"{med(k, 'cold start'):.2f}" for k in KINDS)
        + " |"
    )
    print(
        f"| cold start from source (s) | | {med('before', 'cold start from source'):.2f} "
        f"| {med('after', 'cold start from source'):.2f} |"
    )
    print(f"| the stack's imports alone (s) | | {med('stack', 'imports'):.2f} | |")
    errors = {k: sum(sum(results[k][f"{m} errors"]) for m in LOOPBACK_MODES) for k in KINDS}
    if any(errors.values()):
        print(f"non-2xx or transport errors: {errors}")

    delay = f"{options.delay_ms:g} ms"
    print(
        f"\n| 64 connections, req/s | loopback | {delay} | {delay} / loopback "
        "| the proxy's CPU per request |"
    )
    print("|---|---|---|---|---|")
    for mode in NETWORK_MODES:
        for k in KINDS:
            near, far = (med(k, f"{mode} {path} 64 rps") for path in ("loopback", "network"))
            print(
                f"| {mode}, {k} | {near:.0f} | {far:.0f} | {far / near:.2f}x "
                f"| {med(k, f'{mode} proxy cpu'):.0f} us |"
            )

    print("\n| goal | GET one | list (20) | create | met |")
    print("|---|---|---|---|---|")

    def row(label: str, values: list[float], ok: bool, fmt: str = "{:.2f}x") -> None:
        cells = [fmt.format(v) for v in values] + ["-"] * (3 - len(values))
        print(f"| {label} | " + " | ".join(cells) + f" | {'yes' if ok else 'NO'} |")

    cut = [1 - med("after", f"{m} cpu") / med("before", f"{m} cpu") for m in LOOPBACK_MODES]
    row("worker CPU per request, less than before (>= 25%)", cut, min(cut) >= 0.25, "{:.0%}")
    floor = [med("after", f"{m} rps") / med("floor", f"{m} rps") for m in NETWORK_MODES]
    row("loopback 16: throughput / floor (>= 0.75x)", floor, min(floor) >= 0.75)
    net = [
        med("after", f"{m} network 64 rps") / med("after", f"{m} loopback 64 rps")
        for m in NETWORK_MODES
    ]
    row(f"{delay} 64: throughput / same build on loopback 64 (>= 0.85x)", net, min(net) >= 0.85)
    was = [med("before", f"{m} rps") / med("floor", f"{m} rps") for m in NETWORK_MODES]
    row("(before) loopback 16: throughput / floor", was, True)
    ceiling = [
        med("floor", f"{m} network 64 rps") / med("floor", f"{m} loopback 64 rps")
        for m in NETWORK_MODES
    ]
    row(f"(floor) {delay} 64: throughput / the floor on loopback 64", ceiling, True)
    pss = max(results["after"]["pss"])
    print(
        f"| PSS per worker, largest (<= 40 MiB) | {pss:.1f} MiB | | "
        f"| {'yes' if pss <= 40 else 'NO'} |"
    )
    cold = med("after", "cold start")
    print(
        f"| cold start, bytecode compiled at build (<= 0.6 s) | {cold:.2f} s | | "
        f"| {'yes' if cold <= 0.6 else 'NO'} |"
    )


if __name__ == "__main__":
    main()

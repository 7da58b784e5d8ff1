"""The database goes away and comes back while clients write: no 500, no lost 201.

A PostgreSQL cluster of the test's own (initdb in a temporary folder, its own port) is
stopped and started under a running gunicorn, so the shared server keeps running.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tasks_api import db
from tests.support import REQUIRED, Cluster, free_port, start_gunicorn, token_for


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not Cluster.available():
        pytest.skip("no PostgreSQL server binaries here")
    cluster = Cluster()
    cluster.start()
    db.upgrade(make_url(cluster.url).set(drivername="postgresql+psycopg"))
    yield cluster
    cluster.remove()


@dataclass
class Service:
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture
def service(cluster: Cluster, tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    env = {**REQUIRED, "DATABASE_URL": cluster.url, "WEB_CONCURRENCY": "2"}
    log = (tmp_path / "gunicorn.log").open("w")
    process = start_gunicorn(env, port, log)
    yield Service(port, process)
    process.terminate()
    process.wait(timeout=30)
    log.close()
    assert "Traceback" not in (tmp_path / "gunicorn.log").read_text()


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Authorization": f"Bearer {token_for('outage')}", "Content-Type": "application/json"}
    try:
        connection.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return response.status, json.loads(raw) if raw else None


def test_a_database_restart_loses_no_acknowledged_write_and_heals_itself(
    cluster: Cluster, service: Service
) -> None:
    port = service.port
    created: list[str] = []
    statuses: list[tuple[float, int]] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            status, body = call(port, "POST", "/api/outage/tasks", {"title": f"c{n} #{i}"})
            statuses.append((time.monotonic(), status))
            if status == 201:
                created.append(body["id"])
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    cluster.stop()
    down_at = time.monotonic()
    time.sleep(3)
    assert call(port, "GET", "/api/outage/tasks")[0] == 503
    assert call(port, "GET", "/health")[0] == 200
    cluster.start()
    up_at = time.monotonic()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert {status for _, status in statuses} <= {201, 503}
    assert any(status == 503 for at, status in statuses if down_at <= at < up_at)
    recovered = [at for at, status in statuses if status == 201 and at > up_at]
    assert recovered and recovered[0] - up_at < 5, "not answering 5 s after the restart"
    with psycopg.connect(cluster.url) as conn:
        stored = {str(row[0]) for row in conn.execute("SELECT id FROM tasks")}
    assert set(created) <= stored, "an acknowledged create was lost"
    status, listed = call(port, "GET", "/api/outage/tasks?limit=500")
    assert status == 200 and len(listed) == min(len(stored), 500)


def test_reads_on_connections_killed_by_a_restart_are_retried_not_failed(
    cluster: Cluster, service: Service
) -> None:
    port = service.port
    for _ in range(6):  # give both workers a pooled connection
        assert call(port, "GET", "/api/outage/tasks")[0] == 200
    cluster.stop()
    cluster.start()  # every pooled connection is now dead, and nothing has noticed

    statuses = [call(port, "GET", "/api/outage/tasks")[0] for _ in range(6)]

    assert statuses == [200] * 6


def test_sigterm_lets_requests_in_flight_finish(cluster: Cluster, service: Service) -> None:
    port = service.port
    status, task = call(port, "POST", "/api/outage/tasks", {"title": "locked"})
    assert status == 201
    results: list[int] = []
    with psycopg.connect(cluster.url) as blocker:
        # Hold the row, so the updates below wait inside the server, in flight.
        blocker.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", [task["id"]])
        writers = [
            threading.Thread(
                target=lambda n=n: results.append(
                    call(port, "PUT", f"/api/outage/tasks/{task['id']}", {"title": f"w{n}"})[0]
                )
            )
            for n in range(2)  # one per worker
        ]
        for writer in writers:
            writer.start()
        time.sleep(1)
        service.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert service.process.poll() is None  # still finishing its requests
    # The blocker's transaction ends here; the updates go through.
    for writer in writers:
        writer.join(timeout=30)

    assert results == [200, 200]
    assert service.process.wait(timeout=30) == 0
